"""Options every command shares about the protocol: --protocol and --stage (checked against the
file's stages), and --target / --share for the enrolment target a forecast uses."""

from __future__ import annotations

from kn026.core import protocol_files
from kn026.core.criteria import Protocol, stage_share


def add_options(p, stage: bool = True) -> None:
    """--protocol (and --stage, checked against that protocol's stages once it is loaded)."""
    p.add_argument("--protocol", metavar="NAME|PATH",
                   help="criteria file: a path, or a name in kn026/protocols (default kn026_001, KN026-001)")
    if stage:
        p.add_argument("--stage", type=int, required=True,
                       help="protocol stage: one of the criteria file's stage numbers")


def for_args(args) -> Protocol:
    """The command's protocol, with `args.stage` (when the command has one) checked against it."""
    protocol = protocol_files.load(getattr(args, "protocol", None))
    if getattr(args, "stage", None) is not None:
        protocol.check_stage(args.stage)
    return protocol


def add_target_options(p) -> None:
    """--target / --share: the enrolment target of the stage forecast (see `target_for`)."""
    p.add_argument("--target", type=int, metavar="N",
                   help="patients to enrol in this stage (default: the protocol file's enrolment target)")
    p.add_argument("--share", type=float, metavar="PCT",
                   help="this stage's share of the protocol file's enrolment target, in %% (a file's target "
                        "is for the whole study: no split between stages is assumed; default 100)")


def target_for(args, protocol: Protocol, required: bool = True) -> tuple[int | None, str]:
    """The enrolment target a command uses and the sentence saying which figure it is
    (`(None, "")` when not `required`, the file declares none and none is given)."""
    target, share = getattr(args, "target", None), getattr(args, "share", None)
    declared = protocol.enrollment
    if target is not None and share is not None:
        raise ValueError("give --target (patients) or --share (percent of the protocol's target), not both")
    if target is not None:
        if target < 0:
            raise ValueError(f"--target must be a whole number of patients >= 0, not {target}")
        return target, f"{target} patients (given with --target)"
    if declared.target is None and not required and share is None:
        return None, ""
    if declared.target is None:
        raise ValueError(f"{protocol.name}'s criteria file declares no enrolment target (`enrollment:`); "
                         "give --target N")
    if share is None:
        return declared.target, declared.text()
    if not 0 < share <= 100:
        raise ValueError(f"--share must be a percentage above 0 and at most 100, not {share:g}")
    return stage_share(declared.target, share / 100), declared.text(share / 100)
