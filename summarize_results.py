"""Summarize one or more test.py results files into one table: a row per run.

    python summarize_results.py output/run1/results.csv output/run2/results.csv
    python summarize_results.py output/*/results.csv --output summary.csv --format csv --plot summary.png

SQuAD v2 columns: % valid JSON, official exact match and F1 (HasAns/NoAns split), % exact match among valid JSON,
% correct no-answer ("?" on unanswerable questions), % correct has-answer, abstention precision and recall.
MultiWOZ columns: joint goal accuracy (strict, and fuzzy beside it), slot accuracy and F1, per-domain JGA.
"""

import argparse
import logging
import sys

from llama_squad.cli import HelpFormatter, exit_code_of, parse_strictly, setup_logging
from llama_squad.summary import format_table, headline, plot_summary, summarize_files, write_table

logger = logging.getLogger("summarize_results")


def build_parser() -> argparse.ArgumentParser:
    """The command line: results files, and what to write besides the printed table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("results", nargs="+", help="results.csv files written by test.py (or their folders)")
    parser.add_argument("--output", help="also write the table to this file (.csv or .md)")
    parser.add_argument("--format", choices=["markdown", "csv"], default="markdown", help="how to print the table")
    parser.add_argument("--plot", help="also draw the headline metrics of every run as a bar chart (PNG)")
    parser.add_argument(
        "--all", action="store_true", help="every metric in the table, not only the headline ones (files get all)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_strictly(build_parser(), argv)
    setup_logging()
    try:
        table = summarize_files(args.results)
    except Exception as e:  # a results file that cannot be read: one line naming it; a bug: its traceback
        return exit_code_of(e, logger.error)
    print(format_table(table if args.all else headline(table), args.format))
    for path, write in ((args.output, write_table), (args.plot, plot_summary)):
        if path:
            try:
                write(table, path)
            except Exception as e:  # a full disk, a read-only folder: one line naming the file
                return exit_code_of(e, logger.error, where=path)
            logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
