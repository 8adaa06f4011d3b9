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
    (["support", "--arch", "arm64", "--kernel", "8.0"], "end at 7.2"),
    (["show", "--arch", "x86_64", "--profile", "v2.0", "site", "bpf_fentry_test1"], "2.6.27"),
    (["trace", "--arch", "x86_64", "--profile", "v2.0", "fexit:bpf_fentry_test2", "--call", "2,3"],
     "2.6.27"),
    # struct words must fit u64 (or s64), not be masked
    (["call", "--arch", "rv64", "bpf_testmod_test_struct_arg_1", "2,99999999999999999999999", "1",
      "4"], "word 1 (99999999999999999999999) does not fit in 8 bytes"),
    (["call", "--arch", "x86_64", "bpf_testmod_test_struct_arg_1", "0x10000000000000000,1", "1",
      "4"], "word 0"),
    (["call", "--arch", "arm64", "bpf_testmod_test_struct_arg_1", "-9223372036854775809,1", "1",
      "4"], "word 0"),
    (["call", "--arch", "arm64", "bpf_testmod_test_struct_arg_1", "2,", "1", "4"], "cannot read"),
    # CPUs: --cpus >= 1, --cpu >= 0 and below --cpus, each reported under its own name
    (["call", "--arch", "x86_64", "--cpus", "0", "bpf_fentry_test1", "1"], "'--cpus'"),
    (["call", "--arch", "x86_64", "--cpus", "65", "bpf_fentry_test1", "1"], "'--cpus'"),
    (["call", "--arch", "x86_64", "--cpu", "-1", "bpf_fentry_test1", "1"], "'--cpu'"),
    (["call", "--arch", "x86_64", "--cpu", "3", "--cpus", "2", "bpf_fentry_test1", "1"],
     "'--cpu': CPU 3 does not exist with --cpus 2"),
    (["call", "--arch", "x86_64", "--cpu"], "'--cpu' requires an argument"),
    # negative numbers are arguments; real unknown options are still refused
    (["call", "--arch", "x86_64", "bpf_fentry_test2", "-5", "--bogus", "10"],
     "No such option '--bogus'"),
    (["call", "--arch", "x86_64", "bpf_fentry_test2", "-5"], "takes 2 argument(s), got 1"),
    (["call", "--arch", "x86_64", "bpf_fentry_test2", "-", "1"], "cannot read '-'"),
    (["call", "--arch", "x86_64", "bpf_fentry_test3", "-129", "1", "1"], "does not fit in char"),
    # one trampoline per function
    (["show", "--arch", "x86_64", "trampoline", "fexit:bpf_fentry_test1",
      "fentry:bpf_fentry_test2"], "one trampoline per function"),
    (["show", "--arch", "x86_64", "trampoline", "fexit:bpf_fentry_test1", "bogus"], "bad program"),
    # a profile whose layout contradicts it: a usage error (exit 2), not a model failure
    (["show", "--arch", "riscv64", "--profile", "v6.8", "--layout", "pfe8", "site",
      "bpf_fentry_test1"], "pfe8"),
    (["show", "--arch", "arm64", "--profile", "latest", "--layout", "pfe2", "site",
      "bpf_fentry_test1"], "pfe2"),
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


CALLS = [
    # (argv after "call", output)
    (["--arch", "x86_64", "bpf_fentry_test2", "-5", "10"], "5\n"),
    (["--arch", "x86_64", "bpf_fentry_test2", "-0xa", "10"], "0\n"),     # not "-a 10"
    (["--arch", "arm64", "bpf_fentry_test2", "-5", "--cpu", "1", "10"], "5\n"),
    (["bpf_fentry_test2", "-5", "10", "--arch=riscv64"], "5\n"),
    (["-a", "x86_64", "-l", "fentry-ibt", "bpf_fentry_test2", "-5", "10"], "5\n"),
    (["--arch", "x86_64", "bpf_fentry_test2", "--", "-5", "10"], "5\n"),
    (["--arch", "x86_64", "bpf_fentry_test3", "-1", "-2", "-0x10"], "237\n"),   # unsigned char
    (["--arch", "rv64", "bpf_testmod_test_struct_arg_1", "-1,3", "1", "4"], "7\n"),
    (["--arch", "rv64", "bpf_testmod_test_struct_arg_1", "0xffffffffffffffff,3", "1", "4"], "7\n"),
    (["--arch", "x86_64", "--cpus", "64", "--cpu", "63", "bpf_fentry_test1", "1"], "2\n"),
]


@pytest.mark.parametrize("argv,out", CALLS)
def test_call_takes_negative_numbers_and_options_anywhere(argv, out):
    r = run(["call", *argv])
    assert (r.exit_code, r.output) == (0, out)


def test_cli_cpu_limit_is_the_machines():
    from tramplab import cli
    from tramplab.machine.machine import MachineConfig
    assert cli.MAX_CPUS == MachineConfig.MAX_CPUS
