"""The ``faults:`` section: every failure raykd rehearses on purpose, in one place.

A rehearsal makes chosen work raise ``InjectedFault`` so retries, ``--resume`` and a federation's tolerance of lost
clients can be seen working on a real run: ``trial`` fails chosen Tune trials on their first attempts, ``client``
fails one Flower client's training (in ``client_rounds``, or every round). The keys that once lived elsewhere
(``tune.fail``, ``federated.fail_client``, ``federated.fail_rounds``) are refused in one line naming their new home.
Whether a rehearsal picks work the run has is a cross-field rule: ``raykd.config.rules.check_faults``.
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import Field

from raykd.config.base import Section


class TrialFault(Section):
    """The trials of one method row at one seed raise on their first ``times`` attempts."""

    label: str = Field(description="method row whose trials fail (its label)")
    seed: int = Field(description="seed of the failing trials (every grid point of the row at that seed)")
    times: int = Field(1, ge=1, description="attempts that raise; with tune.max_failures >= times the trial recovers")


class FaultsConfig(Section):
    """Failures to rehearse: Tune trials (``trial``) and a Flower client (``client``, ``client_rounds``)."""

    trial: Union[TrialFault, None] = Field(  # noqa: UP007 - typing.Union: _allowed_keys names its keys on a typo
        None, description="{label, seed, times}: those trials raise on their first attempts"
    )
    client: int | None = Field(None, ge=0, description="this Flower client raises during training")
    client_rounds: list[int] = Field([], description="rounds in which the client raises (empty: every round)")


#: Former fault keys, by section, and their home in ``faults:`` with an example.
MOVED_FAULT_KEYS = {
    "tune": {"fail": ("faults.trial", "faults: {trial: {label: kd, seed: 0, times: 1}}")},
    "federated": {
        "fail_client": ("faults.client", "faults: {client: 1}"),
        "fail_rounds": ("faults.client_rounds", "faults: {client: 1, client_rounds: [1]}"),
    },
}


def without_moved_fault_keys(section: str, value: dict[str, Any]) -> dict[str, Any]:
    """``value`` (a ``section`` as read) without its former fault keys; one set to something is one line naming its
    new home. One left at its default (null, []) is dropped: sweep folders written before the move record it, and
    ``--resume`` must still read them."""
    moved = MOVED_FAULT_KEYS[section]
    for key, (home, example) in moved.items():
        if value.get(key) not in (None, []):
            raise ValueError(f"{section}.{key}: moved; set {home} (e.g. {example})")
    return {k: v for k, v in value.items() if k not in moved}
