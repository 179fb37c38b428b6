"""`make conformance`: run the ONNX node test suite through lpuc.backend and onnxruntime; print figures.

    python -m tests.conformance.report [--jobs N] [--write-expected] [-k SUBSTRING]

Prints the in-scope case count, lpuc's passes / clean failures / crashes, onnxruntime's passes on the
same cases (measured in the same run), and lpuc's failures grouped by reason.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import time
import warnings


def _classify(name: str) -> tuple[str, str, str]:
    """(case name, lpuc status, onnxruntime status); status is "pass" or "fail: reason" / "crash: reason"."""
    import numpy as np
    import onnxruntime.backend as ort_backend

    import lpuc.backend
    from lpuc.errors import LpucError
    from tests.conformance.cases import Crash, case_by_name, run_case

    case = case_by_name(name)
    warnings.simplefilter("ignore")
    statuses = []
    for backend in (lpuc.backend, ort_backend):
        try:
            with np.errstate(all="ignore"):
                run_case(case, backend)
            statuses.append("pass")
        except AssertionError as e:
            statuses.append("fail: wrong result: " + (str(e).strip().splitlines() or [""])[0][:120])
        except LpucError as e:
            statuses.append("fail: " + str(e).replace(f"{name}: ", "")[:160])
        except Crash as e:
            kind = "crash" if backend is lpuc.backend else "fail"
            statuses.append(f"{kind}: " + str(e).splitlines()[0][:160])
    return name, statuses[0], statuses[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=mp.cpu_count())
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    parser.add_argument(
        "--write-expected",
        action="store_true",
        help="rewrite tests/conformance/expected_failures.txt from this run",
    )
    args = parser.parse_args()

    from tests.conformance.cases import conformance_cases

    names = [c.name for c in conformance_cases() if args.k in c.name]
    start = time.perf_counter()
    with mp.get_context("fork").Pool(args.jobs) as pool:
        results = sorted(pool.imap_unordered(_classify, names, chunksize=4))
    seconds = time.perf_counter() - start

    lpuc_pass = sum(r[1] == "pass" for r in results)
    crashes = [r for r in results if r[1].startswith("crash")]
    ort_pass = sum(r[2] == "pass" for r in results)
    print(f"ONNX backend node tests in scope (float32/16, bfloat16, int8-64, uint8, bool): {len(results)}")
    print(
        f"lpuc:        {lpuc_pass} passed, {len(results) - lpuc_pass - len(crashes)} failed cleanly, "
        f"{len(crashes)} crashed   ({seconds:.0f} s with {args.jobs} workers)"
    )
    print(f"onnxruntime: {ort_pass} passed on the same cases")
    reasons = collections.Counter(r[1].split(":", 1)[1].strip()[:70] for r in results if r[1] != "pass")
    print("\nlpuc failures by reason:")
    for reason, count in reasons.most_common(25):
        print(f"  {count:4d}  {reason}")
    for name, status, _ in crashes:
        print(f"CRASH {name}: {status}")
    if args.write_expected:
        from tests.conformance.test_conformance import EXPECTED_FAILURES

        lines = [line for line in EXPECTED_FAILURES.read_text().splitlines() if line.startswith("#")]
        lines += [
            f"{name}  # {status.split(':', 1)[1].strip()}" for name, status, _ in results if status != "pass"
        ]
        EXPECTED_FAILURES.write_text("\n".join(lines) + "\n")
        print(f"\nwrote {EXPECTED_FAILURES}")


if __name__ == "__main__":
    main()
