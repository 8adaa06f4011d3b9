"""The CLI on bad input: every usage error exits 2 with a message naming the option or rule,
never a traceback (issue 8)."""
import pytest
from click.testing import CliRunner

from tramplab.cli import main


def run(argv):
    r = CliRunner().invoke(main, argv)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exc_info
    return r


USAGE_ERRORS = [
    # (argv, a phrase the message must contain)
    (["selftest", "--arch", "x86_64", "--profile", "v1.0"], "earliest supported x86_64 kernel"),
    (["selftest", "--arch", "riscv64", "--profile", "5.5"], "earliest supported riscv64 kernel"),
    (["support", "--arch", "x86_64", "--kernel", "5.15.-1"], "bad kernel version"),
    (["support", "--arch", "x86_64", "--kernel", "2.6"], "x86_64 kernel is 2.6.27"),
    (["support", "--arch", "arm64", "--kernel", "3.17.9"], "arm64 kernel is 3.18"),
    (["support", "--arch", "arm64", "--kernel", "8.0"], "end at 7.1"),
    (["show", "--arch", "x86_64", "--profile", "v2.0", "site", "bpf_fentry_test1"], "2.6.27"),
    (["trace", "--arch", "x86_64", "--profile", "v2.0", "fexit:bpf_fentry_test2", "--call", "2,3"],
     "2.6.27"),
]


@pytest.mark.parametrize("argv,message", USAGE_ERRORS)
def test_usage_errors_exit_2_with_a_message(argv, message):
    r = run(argv)
    assert r.exit_code == 2, r.output
    assert message in r.output, r.output


@pytest.mark.parametrize("argv", [
    ["support", "--arch", "x86_64", "--kernel", "2.6.27"],
    ["support", "--arch", "riscv64", "--kernel", "v7.1.3"],
])
def test_versions_at_the_edges_are_accepted(argv):
    assert run(argv).exit_code == 0
