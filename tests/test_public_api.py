import subprocess
import sys

import masa


def test_every_export_resolves_and_is_documented():
    for name in masa.__all__:
        value = getattr(masa, name)
        assert value.__doc__, name


def test_top_level_helpers_work():
    assert masa.check_answer("so \\boxed{\\frac{1}{2}}", "0.5")
    assert masa.extract_answer("first 3 then \\boxed{4}") == "4"
    assert masa.parse_meta_prediction('{"pass_rate": 3}').pass_rate == 3


def test_unknown_attribute_is_an_attribute_error():
    try:
        masa.does_not_exist  # noqa: B018
    except AttributeError as exc:
        assert "does_not_exist" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_and_answer_checking_do_not_load_torch():
    code = "import sys, masa; masa.check_answer('\\\\boxed{2}', '2'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
