from configs import base
def get_config(arg=None):
  c = base.get_base_config()
  return c
