"""`python -m bench`: the side-by-side benchmark (see docs/performance.md).

    python -m bench                 # everything, a few minutes (`make bench`)
    python -m bench --smoke         # tiny sizes, under a minute (`make bench-smoke`)
    python -m bench --sections streams,nginx --rounds 5

Prints the table on stdout, then one line of JSON (NaN written as null).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import FULL, SECTIONS, SMOKE, run


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the test suite's)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, help="rounds per figure (default 3)")
    parser.add_argument("--langgraph", help="path of the `langgraph` CLI for the official row "
                        "(default: .venv/bin/langgraph, then var/bench-official/bin/langgraph)")
    parser.add_argument("--no-official", action="store_true",
                        help="leave out the official server (the smoke does unless "
                        "--langgraph is given: it takes ~10 s to boot)")
    parser.add_argument("--workdir", type=Path, help="keep keys, logs and databases here")
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    parser.add_argument("--max-seconds", type=float, default=900,
                        help="skip the remaining sections past this many seconds")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    sizes = SMOKE if args.smoke else FULL
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds)
    official = not args.no_official and (not args.smoke or args.langgraph is not None)
    report = _clean(run(sizes, sections, langgraph=args.langgraph, official=official,
                        workdir=args.workdir, max_seconds=args.max_seconds,
                        smoke=args.smoke))
    print(report.pop("table"))
    line = json.dumps(report, separators=(",", ":"))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(line + "\n")
    print(line)
    return 1 if report["meta"]["failed_sections"] else 0


if __name__ == "__main__":
    sys.exit(main())
