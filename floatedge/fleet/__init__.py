"""Fleet deploy: a signed bundle from the workstation onto many devices, with Ansible.

* `deploy.py` — the workstation side: `floatedge deploy BUNDLE -i INVENTORY`, a thin wrapper around the real
  `ansible-playbook` (checks, packs the bundle, runs the shipped playbook, prints the per-host summary);
* `agent.py` — the device side, run by the playbook on each device (`python -m floatedge.fleet.agent STEP`): the
  steps that must be atomic (stage a copied bundle, switch releases, restore, roll back) as one small program;
* `ansible/` — the playbook, its role and a callback plugin that writes the per-host report (package data);
* `cli.py` — `floatedge keygen`, `floatedge sign`, `floatedge deploy`.

The device keeps its releases under `<root>/var/lib/floatedge-fleet/` (docs/deploy.md has the layout); `root` is "/"
on a real device and a simulated device's directory in the tests. Never imports torch.
"""
