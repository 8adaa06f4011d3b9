"""tramplab: an executable model of Linux ftrace, direct calls and BPF trampolines."""
from .errors import EncodeError, KernelError, Oops, ProgramError, TramplabError, UsageError

__version__ = "0.1.0"

__all__ = ["Kernel", "KernelError", "Oops", "EncodeError", "ProgramError", "TramplabError",
           "UsageError"]


def __getattr__(name):
    # Kernel pulls in unicorn/capstone; import it lazily so `import tramplab` stays cheap.
    if name == "Kernel":
        from .kernel import Kernel
        return Kernel
    raise AttributeError(name)
