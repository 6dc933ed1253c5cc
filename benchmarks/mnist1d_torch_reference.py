r"""The MNIST-1D paper's PyTorch recipe for its CNN and MLP, run here: the reference our rows are compared with.

    python benchmarks/mnist1d_torch_reference.py --orders=stored,epoch --seeds=30    # CNN: ~12 s per run, 2 cores
    python benchmarks/mnist1d_torch_reference.py --model=mlp --seeds=10
    python benchmarks/mnist1d_torch_reference.py --equivalence                        # our CNN step vs theirs

Needs torch (the [reference] extra: `make bench` installs it). The data are ours (`research.data.mnist1d.generate`,
the paper's `make_dataset` defaults); the model and loop follow the paper's code (github.com/greydanus/mnist1d,
`notebooks/models.py` and `notebooks/train.py:train_model`): ConvBase (three Conv1d(stride 2, padding 1) + ReLU, a
linear head on the channel-major flatten) or MLPBase (hidden 100, a residual second layer), PyTorch's default
initialisation, Adam lr 1e-2, batch 100, 6000 steps (the notebook's `args.total_steps = 6000`; its loop makes 6001
updates), cross-entropy, test accuracy after the last step. Batch orders:

  stored  batch `step * 100 mod 4000` of the training set as stored (the paper's train_model)
  epoch   a fresh permutation every epoch (our loop's dataset.order=epoch)
  once    one permutation per seed, then that order every epoch

`--equivalence` starts our training loop's train step (configs/mnist1d.py:cnn) and the paper's PyTorch model from
the same weights and feeds both the same batches, printing both losses and test accuracies: they agree to 5-6
digits over the first 50 steps, then drift apart as float rounding compounds (chaotic, not systematic).
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from research.data import mnist1d  # pylint: disable=g-import-not-at-top

ORDERS = ('stored', 'epoch', 'once')
STEPS, BATCH, EVAL_EVERY = 6000, 100, 250


def conv_base():
  """The paper's ConvBase: 5,210 parameters."""
  import torch.nn as nn  # pylint: disable=g-import-not-at-top

  class ConvBase(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv1d(1, 25, 5, stride=2, padding=1)
      self.conv2 = nn.Conv1d(25, 25, 3, stride=2, padding=1)
      self.conv3 = nn.Conv1d(25, 25, 3, stride=2, padding=1)
      self.linear = nn.Linear(125, 10)

    def forward(self, x):
      h = self.conv1(x.view(-1, 1, x.shape[-1])).relu()
      h = self.conv3(self.conv2(h).relu()).relu()
      return self.linear(h.view(h.shape[0], -1))

  return ConvBase()


def mlp_base():
  """The paper's MLPBase: 15,210 parameters."""
  import torch.nn as nn  # pylint: disable=g-import-not-at-top

  class MLPBase(nn.Module):

    def __init__(self):
      super().__init__()
      self.linear1, self.linear2, self.linear3 = nn.Linear(40, 100), nn.Linear(100, 100), nn.Linear(100, 10)

    def forward(self, x):
      h = self.linear1(x).relu()
      return self.linear3(h + self.linear2(h).relu())

  return MLPBase()


MODELS = {'cnn': conv_base, 'mlp': mlp_base}


def train(data: dict, seed: int, order: str, model_name: str = 'cnn') -> float:
  """The paper's train_model with batch order `order`; returns the final test accuracy."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  rng = np.random.RandomState(seed)  # pylint: disable=no-member  (the numpy generator the paper's code seeds)
  model = MODELS[model_name]()
  optimizer = torch.optim.Adam(model.parameters(), 1e-2)
  criterion = torch.nn.CrossEntropyLoss()
  x_train, y_train = torch.tensor(data['x'], dtype=torch.float32), torch.tensor(data['y'], dtype=torch.long)
  n = len(x_train)
  perm = np.arange(n) if order == 'stored' else rng.permutation(n)
  for step in range(STEPS + 1):  # As train_model: `range(args.total_steps + 1)`, one update each.
    start = (step * BATCH) % n
    if order == 'epoch' and start == 0 and step:
      perm = rng.permutation(n)
    index = torch.from_numpy(perm[start:start + BATCH])
    loss = criterion(model(x_train[index]), y_train[index])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
  with torch.no_grad():
    logits = model(torch.tensor(data['x_test'], dtype=torch.float32))
  return float((logits.argmax(-1).numpy() == data['y_test']).mean())


def equivalence(data: dict, seed: int, steps: int) -> None:
  """Our loop's train step and the paper's PyTorch step from the same weights on the same batches."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from configs import mnist1d as presets  # pylint: disable=g-import-not-at-top
  from research import sharding  # pylint: disable=g-import-not-at-top
  from research.training import loop  # pylint: disable=g-import-not-at-top

  config = presets.get_config('cnn')
  config.seed = seed
  mesh = sharding.make_mesh(config.mesh, batch_sizes={'batch_size': config.batch_size})
  built = loop.create_model_and_state(config, num_classes=10, input_shape=(40,), mesh=mesh)
  step_fn = loop.make_jit_train_step(config, built.model, built.tx, built.schedule, mesh, built.state)
  apply = jax.jit(lambda params, x: built.model.apply({'params': params}, x, train=False))
  params = jax.device_get(built.state.params)
  model = conv_base()
  with torch.no_grad():
    for conv, name in zip((model.conv1, model.conv2, model.conv3), ('Im2colConv_0', 'Im2colConv_1', 'Im2colConv_2')):
      conv.weight.copy_(torch.tensor(np.transpose(params[name]['kernel'], (2, 1, 0))))  # [k, in, out] -> [out, in, k]
      conv.bias.copy_(torch.tensor(params[name]['bias']))
    # Our head reads [position, channel] flattened; PyTorch's [channel, position].
    head = params['Dense_0']['kernel'].reshape(5, 25, 10).transpose(2, 1, 0).reshape(10, 125)
    model.linear.weight.copy_(torch.tensor(head))
    model.linear.bias.copy_(torch.tensor(params['Dense_0']['bias']))
  optimizer = torch.optim.Adam(model.parameters(), 1e-2)
  criterion = torch.nn.CrossEntropyLoss()
  x, y = data['x'].astype(np.float32), data['y'].astype(np.int32)
  x_test = data['x_test'].astype(np.float32)
  state = built.state
  report = {0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, steps - 1}
  print('step | loss: ours / PyTorch | test accuracy: ours / PyTorch')
  for step in range(steps):
    start = (step * BATCH) % len(x)
    xb, yb = x[start:start + BATCH], y[start:start + BATCH]
    loss = criterion(model(torch.tensor(xb)), torch.tensor(yb, dtype=torch.long))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    state, metrics = step_fn(state, {'inputs': jnp.asarray(xb), 'labels': jnp.asarray(yb)})
    if step in report:
      ours = (np.asarray(apply(state.params, x_test)).argmax(-1) == data['y_test']).mean()
      with torch.no_grad():
        theirs = (model(torch.tensor(x_test)).argmax(-1).numpy() == data['y_test']).mean()
      print(f'{step:5d} | {float(metrics["loss"]):.6f} / {loss.item():.6f} | {ours:.3f} / {theirs:.3f}', flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='cnn', choices=sorted(MODELS))
  parser.add_argument('--orders', default='stored,epoch', help=f'comma-separated, from {ORDERS}')
  parser.add_argument('--seeds', type=int, default=10)
  parser.add_argument('--equivalence', action='store_true', help='compare our train step with the paper\'s instead')
  parser.add_argument('--steps', type=int, default=STEPS, help='steps of --equivalence')
  parser.add_argument('--json', help='also write the accuracies to this file')
  parser.add_argument('--threads', type=int, default=0, help='torch intra-op threads; 0 = every core')
  args = parser.parse_args()
  orders = args.orders.split(',')
  bad = [o for o in orders if o not in ORDERS]
  if bad or args.seeds < 1:
    parser.error(f'--orders={args.orders}: each must be one of {ORDERS}; --seeds={args.seeds}: must be >= 1')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit('error: torch is not installed; `make bench` installs the [reference] extra')
  torch.set_num_threads(args.threads or os.cpu_count() or 1)
  data = mnist1d.generate(shuffle_seq=False)
  if args.equivalence:
    return equivalence(data, seed=0, steps=args.steps)
  results = {}
  for order in orders:
    accuracies = []
    for seed in range(args.seeds):
      t0 = time.time()
      accuracies.append(train(data, seed, order, args.model))
      print(f'{order} seed {seed}: {100 * accuracies[-1]:.1f}% ({time.time() - t0:.0f} s)', flush=True)
    results[order] = accuracies
  print(f'\nPaper {args.model.upper()} recipe in PyTorch {torch.__version__}, {STEPS} steps, final test accuracy:')
  for order, accuracies in results.items():
    print(f'  {order:6s} {100 * statistics.mean(accuracies):.2f} ± {100 * statistics.pstdev(accuracies):.2f}% '
          f'over {len(accuracies)} seeds')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'model': args.model, 'torch': torch.__version__, 'steps': STEPS, 'test_accuracy': results}, f,
                indent=1)


if __name__ == '__main__':
  main()
