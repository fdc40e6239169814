"""Run the benchmark suite and write ``benchmarks/results/latest.md``.

    python3 dev.py bench            # or: python -P benchmarks/run.py [--quick]

``fair.py`` (each strategy in a long-lived process of its own) and the in-process
part always run; the HTTP part runs when ``wrk`` is on PATH and
gunicorn is installed (``pip install -e ".[bench]"``, ``apt-get install wrk``).
Each part starts its own embedded PostgreSQL server. Benchmarks do not gate CI.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds: a smoke run"
    )
    parser.add_argument(
        "--no-http", action="store_true", help="skip the gunicorn + wrk part"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE / "results" / "latest.md",
        help="where to write",
    )
    args = parser.parse_args(argv)

    import fair
    import inprocess

    today = datetime.date.today().isoformat()
    parts = [
        f"# django-poolconf benchmarks, {today}",
        fair.run([1, 4], *((3, 0.3) if args.quick else (7, 1.0)), True, None, []),
        inprocess.run(args.quick),
    ]
    http_ready = shutil.which("wrk") and importlib.util.find_spec("gunicorn")
    if args.no_http:
        parts.append("HTTP: skipped (--no-http).")
    elif not http_ready:
        parts.append("HTTP: skipped (needs wrk on PATH and gunicorn installed).")
    else:
        import http_bench

        parts.append(
            http_bench.run(
                rounds=1 if args.quick else http_bench.DEFAULT_ROUNDS,
                duration=2 if args.quick else 5,
                concurrencies=(1, 8, 32, 128),
            )
        )
    text = "\n\n".join(part.strip() for part in parts) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
