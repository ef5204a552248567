"""What `config check` reads beyond the config file: each local model's GGUF file.

Loading the config itself never opens a model (a device may start with its model missing
and answer through a remote fallback); `config check` does, so an operator learns of a
missing or truncated model before a run needs it.
"""

from __future__ import annotations

import importlib.util
import os
import stat

from edge_agent.config.model import Config
from sync.config_reader import ConfigIssue

GGUF_MAGIC = b"GGUF"


def check_model_files(config: Config) -> list[ConfigIssue]:
    """One issue per local model whose file is missing, not a file, or not GGUF."""
    issues: list[ConfigIssue] = []
    for name, model in sorted(config.models.items()):
        path = getattr(model, "path", None)
        if model.kind != "llama" or path is None:
            continue
        key = f"model.{name}.path"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            issues.append(ConfigIssue(key, "no such file", str(path)))
            continue
        except OSError as exc:
            issues.append(ConfigIssue(key, f"cannot be read: {exc.strerror or exc}", str(path)))
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                issues.append(ConfigIssue(key, "is not a regular file", str(path)))
                continue
            head = os.read(fd, 8)
        except OSError as exc:
            issues.append(ConfigIssue(key, f"cannot be read: {exc.strerror or exc}", str(path)))
            continue
        finally:
            os.close(fd)
        if head[:4] != GGUF_MAGIC:
            issues.append(ConfigIssue(key, "is not a GGUF model (its header does not begin "
                                      "with GGUF)", str(path)))
        elif len(head) < 8:
            issues.append(ConfigIssue(key, "is a truncated GGUF file", str(path)))
    return issues


def unavailable_models(config: Config) -> dict[str, str]:
    """Local models this installation cannot run, each with why and what to install: a
    llama model needs llama-cpp-python (the `llm` extra). Without it the daemon still starts
    (a remote fallback may stand in), so this is a warning at check and start, and status
    shows the model unavailable."""
    if importlib.util.find_spec("llama_cpp") is not None:
        return {}
    return {name: "llama-cpp-python is not installed: install edge-agent[llm]"
            for name, model in sorted(config.models.items()) if model.kind == "llama"}


def model_warnings(config: Config) -> list[str]:
    """One line per unavailable model, naming its key, the model and the missing extra."""
    return [f"model.{name}: local model {name!r} is unavailable, {why}"
            for name, why in unavailable_models(config).items()]
