"""generate/text.py: deltas are whole UTF-8 characters, stop strings are found across chunks and never leak."""
from gpt3lab.generate.text import StopMatcher, TextStream, Utf8Stream

from gen_helpers import BYTES


def test_utf8_stream_holds_incomplete_characters_and_replaces_bad_bytes():
    u = Utf8Stream()
    euro = "€".encode()
    assert [u.push(euro[:1]), u.push(euro[1:2]), u.push(euro[2:])] == ["", "", "€"]
    assert u.push(b"\xff") == "\ufffd"
    assert u.push(euro[:2]) == "" and u.flush() == "\ufffd"            # cut off at the end


def test_stop_strings_across_chunks_are_cut_and_false_starts_released():
    m = StopMatcher(["\n\nQ:", "END"])
    assert m.push("ab\n") == ("ab", False)                            # "\n" may start "\n\nQ:"
    assert m.push("\nQ") == ("", False)
    assert m.push("x") == ("\n\nQx", False)                           # not a stop after all
    assert m.push("yyEN") == ("yy", False)
    assert m.push("D and more") == ("", True)
    assert StopMatcher(["zz"]).push("az") == ("a", False)


def test_text_stream_deltas_concatenate_to_the_text_before_the_stop():
    text = "h€llo 😀 world STOP tail"
    s = TextStream(BYTES, ["STOP"])
    deltas, stopped = [], False
    for b in text.encode():
        d, stopped = s.push(b)
        deltas.append(d)
        assert "\ufffd" not in d
        if stopped:
            break
    assert stopped and "".join(deltas) == "h€llo 😀 world "
    s = TextStream(BYTES, ["STOP"])
    out = "".join(s.push(b)[0] for b in "ab ST".encode()) + s.flush()
    assert out == "ab ST"                                              # held back, released at the end
