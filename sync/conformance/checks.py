"""Results of a conformance run."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Check:
    section: str  # of sync/PROTOCOL.md
    rule: str
    passed: bool
    detail: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def check(self, section: str, rule: str, passed: bool, detail: str = "") -> bool:
        self.checks.append(Check(section, rule, passed, detail))
        return passed

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def render(self) -> str:
        lines = [f"{'ok  ' if c.passed else 'FAIL'} §{c.section:4} {c.rule}"
                 + (f"  ({c.detail})" if c.detail and not c.passed else "")
                 for c in self.checks]
        failed = sum(not c.passed for c in self.checks)
        lines.append(f"{len(self.checks) - failed} passed, {failed} failed")
        return "\n".join(lines)
