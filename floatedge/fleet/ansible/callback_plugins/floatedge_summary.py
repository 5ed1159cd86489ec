"""Ansible callback: each host's outcome of a floatedge deploy, written as JSON for `floatedge deploy`'s summary.

Enabled by `floatedge deploy` (ANSIBLE_CALLBACKS_ENABLED=floatedge_summary); the file is FLOATEDGE_DEPLOY_REPORT.
Per host: Ansible's own counts (ok, failed, unreachable, rescued), the last failed task and its message, and what
the role recorded with `set_stats` (per_host) under the key `floatedge`. Ansible's callback interface:
`ansible.plugins.callback.CallbackBase`, `v2_runner_on_failed`, `v2_runner_on_unreachable`, `v2_playbook_on_stats`
(AggregateStats: `processed`, `summarize(host)`, `custom`).
"""
from __future__ import annotations

import json
import os

try:
    from ansible.plugins.callback import CallbackBase
except ImportError:  # imported outside Ansible (the package's import checks): nothing to do then
    CallbackBase = object

DOCUMENTATION = """
    name: floatedge_summary
    type: aggregate
    short_description: per-host outcome of a floatedge deploy as JSON
    description:
      - Writes each host's counts, last failure and the role's recorded outcome to the file FLOATEDGE_DEPLOY_REPORT.
    requirements:
      - enabled in callbacks_enabled (floatedge deploy does this)
"""


def _message(result: dict) -> str:
    for key in ("msg", "stderr", "module_stderr", "stdout"):
        text = str(result.get(key) or "").strip()
        if text:
            return text.splitlines()[0]
    return "failed"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "floatedge_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failures: dict[str, dict] = {}

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if not ignore_errors:
            self.failures[result._host.get_name()] = {"task": result._task.get_name(), "error": _message(result._result)}

    def v2_runner_on_unreachable(self, result):
        self.failures[result._host.get_name()] = {"task": result._task.get_name(), "error": _message(result._result),
                                                  "unreachable": True}

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("FLOATEDGE_DEPLOY_REPORT")
        if not path:
            return
        hosts = {}
        for host in sorted(stats.processed):
            counts = stats.summarize(host)
            hosts[host] = {"counts": counts, "failure": self.failures.get(host),
                           "record": (stats.custom.get(host) or {}).get("floatedge")}
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"hosts": hosts}, f, indent=1, default=str)
        os.replace(tmp, path)
