"""Command-line plumbing shared by entry points: config flags with clear usage errors (exit 2, no traceback)."""

import importlib.util
import sys

from absl import flags
from absl import logging
import ml_collections

from research.config import ConfigError, validate

USAGE_EXIT = 2

_DEBUG = flags.DEFINE_bool('debug', False, 'On an input error, also show the traceback (they are hidden otherwise).')


def usage_error(message: str) -> None:
  """Prints one clear error line and exits with code 2 (with --debug, the traceback being handled comes first)."""
  if _DEBUG.present and _DEBUG.value and sys.exc_info()[0] is not None:
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
  print(f'error: {message}', file=sys.stderr)
  sys.exit(USAGE_EXIT)


def input_errors() -> tuple[type[Exception], ...]:
  """Exceptions that mean bad input (config, workdir, data files) rather than a bug: exit 2, no traceback."""
  from research import data, workdir  # pylint: disable=g-import-not-at-top  (heavy; only once JAX is needed)

  return ConfigError, workdir.WorkdirError, data.DataUnavailableError


def _load_preset(argv: list[str]) -> ml_collections.ConfigDict | None:
  """Loads --config=FILE[:ARG] without overrides (to explain a failed override); None if it cannot."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(':')
  try:
    module_spec = importlib.util.spec_from_file_location('_preset', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except
    return None


def _explain_override(argv: list[str]) -> str | None:
  """Names the first --config.KEY=VALUE whose KEY does not exist in the preset."""
  preset = _load_preset(argv)
  if preset is None:
    return None
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    key, _, value = arg[len('--config.'):].partition('=')
    node = preset
    for i, part in enumerate(key.split('.')):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        group = '.'.join(key.split('.')[:i]) or 'the top level'
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        return f'unknown config key {key!r} (from {arg}); known keys in {group}: {known}'
      node = node[part]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags_parser for app.run: a bad flag or config file becomes a usage error (exit 2)."""
  # absl logs INFO to stderr by default; Orbax then prints a dozen lines per checkpoint. Warnings still show.
  logging.set_verbosity(logging.WARNING)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    # config_flags embeds the preset's traceback in the message; its last line is the actual error.
    lines = [line for line in str(e).splitlines() if line.strip()]
    usage_error(f'{lines[0]} {lines[-1]}' if 'Traceback' in str(e) else str(e))
  except (AttributeError, KeyError) as e:
    usage_error(_explain_override(argv) or f'bad config override: {e}')
  except Exception as e:  # pylint: disable=broad-except
    # config_flags reports a missing/broken config file as OSError/ImportError etc. from deep inside absl.
    usage_error(f'could not load the config: {e}')
  return []


def resolved_config(config_flag: flags.FlagHolder, *, distributed: bool = False) -> ml_collections.ConfigDict:
  """Returns the --config value validated against configs/base.py; usage error on any problem.

  Args:
    config_flag: the --config flag.
    distributed: first initialize JAX's multi-process runtime from the config's `distributed` group
      (research.distributed): it must precede validation, which builds the model abstractly on JAX's backend.
  """
  from configs import base  # pylint: disable=g-import-not-at-top

  try:
    config_flag_value = config_flag.value
    if config_flag_value is not None:
      config_flag_value.keys()  # A failed load is a proxy that raises on first use: trigger it here.
  except Exception as e:  # pylint: disable=broad-except
    # config_flags defers a missing/broken config file's error (OSError, ImportError, ...) to the first access.
    usage_error(f'could not load the config: {" ".join(str(e).split())}')
  if config_flag_value is None:
    usage_error('--config is required, e.g. --config=configs/mnist1d.py:cnn')
  try:
    if distributed:
      from research import distributed as distributed_lib  # pylint: disable=g-import-not-at-top
      if 'distributed' in config_flag_value:
        distributed_lib.initialize(config_flag_value.distributed)
    validate(config_flag_value, base.get_base_config())
  except ConfigError as e:
    usage_error(str(e))
  return config_flag_value
