"""Training: state, optimizer factory, losses, pure steps and the train_and_evaluate loop."""
