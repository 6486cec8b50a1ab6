"""bench/report.py: regenerating docs/benchmarks.md keeps the sections of benchmarks that were not re-run."""

from __future__ import annotations

import json

from bench.report import DOC_INTRO, write_docs


def _result(title: str, value: float) -> dict:
    return {"name": title.lower(), "title": title, "intro": f"What {title} measures.", "baseline_label": "direct",
            "rows": [{"metric": "requests per second", "casgate": value, "baseline": 2 * value, "ratio": 0.5}],
            "settings": {"rounds": 3, "seconds": 5, "connections": 10}}


def test_sections_without_a_stored_result_are_kept_in_place(tmp_path):
    docs, results = tmp_path / "benchmarks.md", tmp_path / "results"
    results.mkdir()
    docs.write_text(DOC_INTRO + "\n## Alpha\n\nAlpha's old figures, by hand.\n\n### A sub-part\n\nmore.\n\n"
                    "## Beta\n\nBeta's old figures.\n")
    machine = {"date": "2026-11-28 18:00 UTC", "commit": "abc1234", "nproc": 2}
    for title, value in (("Beta", 40.0), ("Gamma", 7.0)):
        (results / f"{title.lower()}.json").write_text(json.dumps({"machine": machine,
                                                                   "result": _result(title, value)}))
    write_docs(["alpha", "beta", "gamma"], docs, results)
    text = docs.read_text()
    assert text.startswith(DOC_INTRO)
    assert "Alpha's old figures, by hand." in text and "### A sub-part" in text  # no result here: kept
    assert "Beta's old figures." not in text and "| requests per second | 40.0 | 80.0 | 0.50 |" in text
    assert text.index("## Alpha") < text.index("## Beta") < text.index("## Gamma")  # new ones at the end
    assert text.count("## Beta") == 1 and "| requests per second | 7.0 | 14.0 | 0.50 |" in text
    write_docs(["alpha", "beta", "gamma"], docs, results)
    assert docs.read_text() == text  # regenerating again changes nothing
