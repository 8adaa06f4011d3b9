"""BPF programs, links, the trampoline manager and the trampoline JIT contract."""
