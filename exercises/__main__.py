"""
The exercises' runner: python -m exercises list | check NAME [--reference] [--train] | check --all [--json]

A grade imports the student's file afresh (or, with --reference, the repo's own code through
the grader's reference()) and runs the grader's cases; the exit code is 0 when every case
passes. A stub still raising NotImplementedError is "not started".
"""

import argparse
import importlib
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from exercises import COURSE  # noqa: E402


def grade(name, reference=False):
    """{"name", "status": passing | failing | not started, "cases": [(case, ok, expected, got, hint)], "error"}."""
    grader = importlib.import_module(f"exercises.graders.{name}")
    out = {"name": name, "cases": [], "error": None}
    try:
        impl = grader.reference() if reference else importlib.import_module(f"exercises.{name}")
        for case, ok, expected, got, hint in grader.cases(impl):
            out["cases"].append((case, bool(ok), repr(expected), repr(got), hint))
    except NotImplementedError as e:
        out["status"], out["error"] = "not started", f"NotImplementedError: {e}"
        return out
    except Exception as e:  # a student's bug: say where, keep going with the other exercises
        out["status"], out["error"] = "failing", f"{type(e).__name__}: {e}"
        return out
    out["status"] = "passing" if all(c[1] for c in out["cases"]) else "failing"
    return out


def train_check(result, reference=False, tolerance=0.02):
    """--train: the grader's train(impl, out_dir) with the student's functions and with the
    reference's; the exercise passes when the two final val losses are within `tolerance`."""
    grader = importlib.import_module(f"exercises.graders.{result['name']}")
    if not hasattr(grader, "train") or result["status"] != "passing":
        result["train"] = None if hasattr(grader, "train") else "this exercise has no --train run"
        return
    import tempfile

    impl = grader.reference() if reference else importlib.import_module(f"exercises.{result['name']}")
    with tempfile.TemporaryDirectory() as tmp:
        want = grader.train(grader.reference(), os.path.join(tmp, "reference"))
        got = grader.train(impl, os.path.join(tmp, "yours"))
    ok = abs(got - want) <= tolerance
    result["cases"].append((f"--train: val loss {got:.4f} vs the repo's {want:.4f}", ok, repr(want), repr(got),
                            None if ok else f"your function trains differently by {got - want:+.4f} nats (more than "
                                            f"{tolerance}): compare it with the reference at every step of the run"))
    result["status"] = "passing" if all(c[1] for c in result["cases"]) else "failing"


def show(result):
    print(f"{result['name']}: {result['status']}")
    if result["error"]:
        print(f"  {result['error']}")
    for case, ok, expected, got, hint in result["cases"]:
        if ok:
            print(f"  ok    {case}")
        else:
            print(f"  FAIL  {case}: expected {expected}, got {got}")
            print(f"        hint: {hint}")
    passed = sum(c[1] for c in result["cases"])
    if result["cases"]:
        print(f"  {passed} of {len(result['cases'])} cases pass")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m exercises", description=__doc__.strip().splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the exercises in course order, with their status")
    c = sub.add_parser("check", help="grade one exercise (or --all)")
    c.add_argument("name", nargs="?", choices=COURSE)
    c.add_argument("--all", action="store_true", help="every exercise")
    c.add_argument("--json", action="store_true", help="one JSON object: {name: {status, passed, total}}")
    c.add_argument("--reference", action="store_true", help="grade the repo's own code (the graders' check)")
    c.add_argument("--train", action="store_true",
                   help="also run a short real training with your function and compare it with the repo's (where the "
                        "exercise has one)")
    args = p.parse_args(argv)
    if args.command == "list":
        for i, name in enumerate(COURSE, 1):
            print(f"{i:2d}. {name:<18} {grade(name)['status']}")
        return 0
    if bool(args.name) == args.all:
        p.error("give one exercise NAME or --all")
    results = [grade(n, args.reference) for n in (COURSE if args.all else [args.name])]
    if args.train:
        for r in results:
            train_check(r, args.reference)
    if args.json:
        print(json.dumps({r["name"]: {"status": r["status"], "passed": sum(c[1] for c in r["cases"]),
                                      "total": len(r["cases"]), "error": r["error"]} for r in results}, indent=1))
    else:
        for r in results:
            show(r)
    return 0 if all(r["status"] == "passing" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
