"""How the page writes names, results and reports: user text is shown as typed, never as markdown."""

from types import SimpleNamespace

from ui.formatting import code, text_line, timing_line, upload_summary


def test_code_spans_survive_backticks_brackets_and_newlines():
    assert code("cat.jpg") == "`cat.jpg`"
    assert code("a``b") == "```a``b```"  # a longer fence than any run inside
    assert code("`edge`") == "`` `edge` ``"  # padded: CommonMark strips one space each side
    assert code("[x](http:evil.example)") == "`[x](http:evil.example)`"
    assert code("two\n\nlines") == "`two lines`"  # a blank line would end the span
    assert code("") == "“”"


def _result(timings, text=None):
    return SimpleNamespace(timings=timings, device="CPU", runtime="Keras f32", text=text)


def test_timing_line_names_each_stage_and_the_kind_of_text_search():
    image = _result({"decode_ms": 1.0, "embed_ms": 20.0, "search_ms": 0.5, "rerank_ms": 0.1, "total_ms": 21.6})
    line = timing_line(image)
    assert "embed **20.0 ms**" in line and "re-rank **0.1 ms**" in line and "Keras f32" in line
    assert "graph built" not in line
    words = _result({"search_ms": 0.8, "total_ms": 0.8},
                    {"mode": "text", "terms": ["espresso"], "matched": 2, "described": 61})
    assert "Searched captions and tags" in timing_line(words) and "no model ran" in timing_line(words)
    fused = _result({**image.timings, "text_ms": 0.3},
                    {"mode": "fuse", "terms": ["cat", "`x`"], "matched": 5, "weight": 0.25})
    line = timing_line(fused)
    assert "0.75 × image similarity + 0.25 ×" in line and "text **0.3 ms**" in line and "`` `x` ``" in line
    assert text_line({"mode": "filter", "terms": ["pet"], "matched": 3}).startswith("**Image search, filtered")


def test_upload_summary_quotes_every_name_it_shows():
    report = SimpleNamespace(added=["a"], duplicates=[("[b](http:x)", "a")], unchanged=0,
                             skipped=[SimpleNamespace(name="**bold**.png", reason="not an image:\ncannot identify")],
                             computed=1, seconds=0.5, device="CPU", limit=None, metadata=[])
    text = upload_summary(report)
    assert "`[b](http:x)`" in text and "`**bold**.png`" in text
    assert "not an image: cannot identify" in text  # one line per skipped file
