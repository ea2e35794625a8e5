"""Live reloading of what the scorer serves: model, shadow model, rule set.

The first load is `antifraud.engine.services.build_services`; this module only swaps. A reload builds the new
object completely before swapping one reference, so a request in flight keeps the snapshot it
started with and no request ever sees half a reload. Anything that fails to load is refused with
its errors and the previous version keeps serving. Every worker polls the files once a second and
reloads what changed and then held still, so an edit (or an admin reload, which also reloads at once
in its worker) reaches all workers without a deploy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from antifraud.engine.model import ModelError, ModelRuntime
from antifraud.engine.pipeline import Scorer
from antifraud.engine.rules import RuleSetError, load_ruleset, rule_names
from antifraud.engine.settings import Settings

log = logging.getLogger("antifraud.loader")


def _fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.exists())


class Reloader:
    """Swaps a worker's model and rules when asked or when their files change.

    Built right after the first load: the files' state it notes then is what counts as unchanged.
    The result of a reload is `{"reloaded": True, "<rules|model>_version": ...}` or
    `{"reloaded": False, "errors": [...]}`; it never raises for a bad file.
    """

    def __init__(self, settings: Settings, scorer: Scorer) -> None:
        self.settings = settings
        self.scorer = scorer
        self.names = rule_names(scorer.features.feature_names)
        self._seen: dict[str, Any] = {
            "rules": _fingerprint(settings.rules_dir),
            "model": _fingerprint(settings.model_dir),
        }
        if settings.shadow_model_dir is not None:
            self._seen["shadow"] = _fingerprint(settings.shadow_model_dir)

    def reload_rules(self) -> dict[str, Any]:
        """Load the rule set; on errors keep the current one and report them."""
        self._seen["rules"] = _fingerprint(self.settings.rules_dir)
        try:
            rules = load_ruleset(self.settings.rules_dir, self.names)
        except RuleSetError as exc:
            errors = [str(e) for e in exc.errors]
            log.error("rule set refused, previous one keeps serving: %s", errors)
            return {"reloaded": False, "errors": errors}
        self.scorer.loaded = replace(self.scorer.loaded, rules=rules)
        if self.scorer.metrics is not None:  # the versions /metrics shows as live
            self.scorer.metrics.note_loaded(self.scorer.loaded)
        log.info("rules %s loaded", rules.version)
        return {"reloaded": True, "rules_version": rules.version}

    def reload_model(self, shadow: bool = False) -> dict[str, Any]:
        """Load the model (or the shadow model); on failure keep the current one and report why."""
        directory = self.settings.shadow_model_dir if shadow else self.settings.model_dir
        if directory is None:
            return {"reloaded": False, "errors": ["no shadow model directory is configured"]}
        self._seen["shadow" if shadow else "model"] = _fingerprint(directory)
        try:
            model = ModelRuntime(directory, self.scorer.features.feature_names)
        except (ModelError, OSError) as exc:
            log.error("model refused, previous one keeps serving: %s", exc)
            return {"reloaded": False, "errors": [str(exc)]}
        if shadow:
            self.scorer.loaded = replace(self.scorer.loaded, shadow=model)
        else:
            self.scorer.loaded = replace(self.scorer.loaded, model=model)
        if self.scorer.metrics is not None:  # the versions /metrics shows as live
            self.scorer.metrics.note_loaded(self.scorer.loaded)
        log.info("%s %s loaded", "shadow model" if shadow else "model", model.version)
        return {"reloaded": True, "model_version": model.version}

    async def watch(self, every_s: float = 1.0) -> None:
        """Poll the rules and model files; reload what changed and then held still for one poll.

        Waiting for the files to hold still matters: an editor or `cp` that rewrites a file in place
        can be caught half-written, and a truncated rule set may still be valid YAML, and wrong.
        """
        reloads: dict[str, Callable[[], Any]] = {"rules": self.reload_rules, "model": self.reload_model}
        paths = {"rules": self.settings.rules_dir, "model": self.settings.model_dir}
        if self.settings.shadow_model_dir is not None:
            reloads["shadow"] = lambda: self.reload_model(shadow=True)
            paths["shadow"] = self.settings.shadow_model_dir
        changing: dict[str, Any] = {}
        while True:
            await asyncio.sleep(every_s)
            for name, path in paths.items():
                now = _fingerprint(path)
                if now == self._seen.get(name):
                    changing.pop(name, None)
                elif changing.get(name) == now:
                    del changing[name]
                    reloads[name]()
                else:
                    changing[name] = now
