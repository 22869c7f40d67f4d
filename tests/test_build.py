"""The built module's layout: the functions httpd runs (link/hot-code.ld,
written by scripts/hot-code) sit together at the front of .text."""
import fnmatch
import re
import subprocess

from httpd_env import MODULE, ROOT


def text_section():
    out = subprocess.run(["readelf", "-SW", str(MODULE)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.replace("[ ", "[").split()
        if len(fields) > 5 and fields[1] == ".text":
            return int(fields[3], 16), int(fields[5], 16)
    raise AssertionError(f"{MODULE} has no .text")


def code_symbols():
    out = subprocess.run(["nm", "-S", str(MODULE)], capture_output=True, text=True, check=True).stdout
    return [(f[3], int(f[0], 16), int(f[1], 16)) for f in map(str.split, out.splitlines())
            if len(f) == 4 and f[2] in "tT"]


def listed_functions():
    """The function patterns of link/hot-code.ld, without the section prefix."""
    return re.findall(r"\*\(\.text\.(\S+) \.text\.unlikely\.\S+\)", (ROOT / "link" / "hot-code.ld").read_text())


def test_listed_functions_sit_together_at_the_front_of_text():
    start, size = text_section()
    patterns = listed_functions()
    assert len(patterns) > 200, "link/hot-code.ld lists too few functions"
    symbols = code_symbols()
    found, hot_end = 0, start
    for p in patterns:
        matches = [(addr, length) for name, addr, length in symbols if fnmatch.fnmatchcase(name, p)]
        found += bool(matches)
        hot_end = max([hot_end] + [addr + length for addr, length in matches])
    # Functions renamed or inlined since the list was made fall back to the
    # rest of .text; once many have, the list needs making again.
    assert found >= 0.85 * len(patterns), (
        f"only {found} of {len(patterns)} functions of link/hot-code.ld are in the module: "
        "run scripts/hot-code")
    # Linked without the list, these functions spread over all of .text.
    assert hot_end - start < 0.5 * size, (
        f"the listed functions span {hot_end - start} of {size} bytes of .text: "
        "was the module linked with build/module.ld?")
