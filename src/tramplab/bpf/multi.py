"""Multi-function attach: the tracing_multi link (Jiri Olsa, bpf-next 2026 -> v7.2; kernel-anchors
§5), mixed into the trampoline manager.

One fentry / fexit / fmod_ret program on many functions.  Each function gets (or shares) its
own ordinary trampoline, generated with its own function model, so mixed argument counts and
struct arguments are right; a function's node carries its cookie.  All sites change together:
the images are staged first, then the ones that are new go in one `register_batch` and the
ones replaced in one `modify_batch` (with v7.0's single direct ops: one update_ftrace_direct_add
and one _mod, i.e. one ftrace update each; older API generations loop).  Detach is the same with
`unregister_batch` for functions left without programs.

The kernel's rules, checked before anything changes: an empty or duplicated function list is
EINVAL, more than MAX_MULTI_FUNCS is E2BIG, a function already at its trampoline's link limit
is E2BIG, one replaced by an freplace program is EBUSY.  Any failure part way -- the JIT
refusing one function, a batch failing after another succeeded -- undoes everything: text,
memory and state are as before.

    link = k.bpf.attach_multi(prog, ["bpf_fentry_test1", "bpf_fentry_test2"], cookies=[1, 2])
    link = k.bpf.attach_multi(prog, "synth_0*")          # a bpftrace-style pattern
    link.detach()
"""
from __future__ import annotations

import contextlib
import gc

import fnmatch
from dataclasses import dataclass, field
from typing import Generator

from ..errors import KernelError, UsageError
from .spec import FuncModel

MAX_MULTI_FUNCS = 1 << 20          # the kernel bounds cnt as kprobe.multi does (MAX_KPROBE_MULTI_CNT)


@dataclass(eq=False)
class MultiLink:
    """struct bpf_tracing_multi_link: one node (an ordinary Link) per function."""

    prog: object
    nodes: list = field(default_factory=list)
    manager: object = None
    attached: bool = True

    @property
    def functions(self) -> list[str]:
        return [node.tr.name for node in self.nodes]

    @property
    def cookies(self) -> dict[str, int]:
        return {node.tr.name: node.cookie for node in self.nodes}

    def detach(self) -> None:
        self.manager.detach_multi(self)


class MultiAttach:
    """Mixed into BpfManager."""

    # ---------------------------------------------------------------- the designs
    def model_for(self, tr):
        """The function model a trampoline is generated with.  Per-function (merged): its own.
        The 2021 design (profile multi-2021): as soon as a multi program is on it, every
        register argument as a u64 and a u64 return value -- the same for every function, so
        one image could serve them all, and a single program verified against the function's
        real prototype finds the return value somewhere else (seed 003).  The 2025 design
        (profile multi-2025, Menglong Dong): one global caller per number of argument slots,
        so functions are grouped by that count; register arguments only."""
        design = self.profile.multi_design
        if design == "per-function" or not any(
                link.prog.multi for links in tr.links.values() for link in links):
            return tr.model
        if design == "max-args-2021":
            n = len(self.machine.arch.arg_regs)
        else:                              # "by-arg-count-2025": one caller per slot count
            n = tr.model.nr_arg_slots
            if n > len(self.machine.arch.arg_regs):
                raise KernelError("ENOTSUPP", f"{tr.name}: {n} argument slots; the 2025 "
                                              "global callers take register arguments only")
        return FuncModel(n, (8,) * n, (False,) * n, (False,) * n, 8)

    def _check_design(self, prog, names) -> None:
        """The 2021 design's rule: two multi links overlap entirely or not at all."""
        if self.profile.multi_design != "max-args-2021":
            return                         # (the 2025 and merged designs allow overlaps)
        mine = set(names)
        for link in self.multi_links():
            theirs = set(link.functions)
            if theirs & mine and theirs != mine:
                raise KernelError("EBUSY", f"the 2021 multi trampolines cannot overlap "
                                           f"partially: {link.prog.name} covers "
                                           f"{len(theirs & mine)} of these functions and "
                                           f"{len(theirs - mine)} others")

    def multi_links(self) -> list[MultiLink]:
        return [link for link in self._multi_links if link.attached]

    # ---------------------------------------------------------------- targets
    def resolve_targets(self, targets) -> list[str]:
        """A list of function names, or a glob pattern over the traceable functions."""
        if isinstance(targets, str):
            names = [n for n in self.kernel.functions
                     if fnmatch.fnmatchcase(n, targets)
                     and self.kernel.ftrace.ftrace_location(self.kernel.function(n).addr)]
            if not names:
                raise KernelError("EINVAL", f"no traceable function matches {targets!r}")
            return names
        if not isinstance(targets, (list, tuple)) or not all(
                isinstance(t, str) or t in self.progs.values() for t in targets):
            raise UsageError("targets: a list of function names (or loaded BPF programs) or "
                             "a pattern string")
        if not targets:
            raise KernelError("EINVAL", "tracing_multi: the function list is empty")
        keys = [t if isinstance(t, str) else id(t) for t in targets]
        if len(set(keys)) != len(keys):
            dup = sorted({str(t) for t, key in zip(targets, keys) if keys.count(key) > 1})
            raise KernelError("EINVAL", f"tracing_multi: duplicate functions {dup[:5]}")
        return list(targets)

    # ---------------------------------------------------------------- attach / detach
    def attach_multi(self, prog, targets, cookies=None) -> MultiLink:
        return self.kernel.ftrace.run(self.attach_multi_steps(prog, targets, cookies),
                                      f"multi attach of {getattr(prog, 'name', prog)}")

    def attach_multi_steps(self, prog, targets, cookies=None) -> Generator:
        if prog not in self.progs.values():
            raise UsageError(f"{prog!r} is not a program loaded in this kernel")
        if prog.kind not in ("fentry", "fexit", "fmod_ret") or not prog.multi:
            raise UsageError(f"{prog.name} is not a multi program (load it with multi=True: "
                             "fentry/fexit/fmod_ret only)")
        names = self.resolve_targets(targets)
        if len(names) > MAX_MULTI_FUNCS:
            raise KernelError("E2BIG", f"tracing_multi: {len(names)} functions > "
                                       f"{MAX_MULTI_FUNCS}")
        cookies = self._cookies(cookies, len(names))
        self._check_design(prog, [n if isinstance(n, str) else n.name for n in names])
        link = MultiLink(prog, [], self)
        trs = []
        try:
            with _no_cyclic_gc():
                for name, cookie in zip(names, cookies):
                    tr = self.get_trampoline(prog, name)
                    trs.append(tr)
                    link.nodes.append(self.add_link_node(tr, prog, cookie))
            yield from self.update_many_steps(trs)
        except BaseException:
            for node in link.nodes:
                node.tr.links[prog.kind].remove(node)
            for tr in trs:
                self.put_trampoline(tr)
            raise
        self._multi_links.append(link)
        return link

    def detach_multi(self, link: MultiLink) -> None:
        self.kernel.ftrace.run(self.detach_multi_steps(link), f"multi detach of {link.prog.name}")

    def detach_multi_steps(self, link: MultiLink) -> Generator:
        if not link.attached:
            raise KernelError("EINVAL", f"the multi link of {link.prog.name} is already "
                                        "detached")
        places = []
        for node in link.nodes:
            kind = node.tr.links[node.prog.kind]
            places.append((kind, kind.index(node), node))
            kind.remove(node)
        skipped: list = []
        try:
            if self.profile.prog_skip:
                for node in link.nodes:
                    yield from self.skip_prog_steps(node.tr, node.prog, skipped)
            yield from self.update_many_steps([node.tr for node in link.nodes])
        except BaseException:
            self.unskip(skipped)
            for kind, pos, node in reversed(places):
                kind.insert(pos, node)
            raise
        link.attached = False
        self._multi_links.remove(link)
        for node in link.nodes:
            node.attached = False
            self.put_trampoline(node.tr)

    @staticmethod
    def _cookies(cookies, n: int) -> list[int]:
        if cookies is None:
            return [0] * n
        cookies = list(cookies)
        if len(cookies) != n:
            raise UsageError(f"{len(cookies)} cookies for {n} functions")
        for c in cookies:
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < 1 << 64:
                raise UsageError(f"cookie {c!r} is not a u64")
        return cookies

    # ---------------------------------------------------------------- the batched update
    def update_many_steps(self, trs) -> Generator:
        """Bring every trampoline in `trs` to what its links need, all sites in batches:
        stage the images, then register / modify / unregister them batch by batch; a
        failure undoes the batches already done and every staged image.  An EAGAIN from the
        IPMODIFY sharing (seed 002) regenerates and retries, as bpf_trampoline_update does."""
        with _no_cyclic_gc():
            return (yield from self._update_many_steps(trs))

    def _update_many_steps(self, trs) -> Generator:
        for _attempt in range(3):
            stages, flags = [], {tr: tr.flags for tr in trs}
            try:
                for tr in trs:
                    if tr.count:
                        tr.flags = self.flags_to_build(tr)
                        stages.append(self._stage(tr))
                yield from self._batches(trs, stages)
            except KernelError as e:
                for stage in stages:
                    self._unstage(stage)
                # ops_func answered EAGAIN after marking the trampolines that must share the
                # function with an IPMODIFY ops: rebuild those to call the original through
                # the stack, and try again
                shared = [tr for tr in trs
                          if tr.flags & self.SHARE_BIT and not flags[tr] & self.SHARE_BIT]
                for tr in trs:
                    tr.flags = flags[tr] | (tr.flags & self.SHARE_BIT if tr in shared else 0)
                if e.name == "EAGAIN" and shared:
                    continue
                for tr in trs:
                    tr.flags = flags[tr]
                raise
            except BaseException:
                for stage in stages:
                    self._unstage(stage)
                for tr in trs:
                    tr.flags = flags[tr]
                raise
            for stage in stages:
                yield from self._commit(stage)
            for tr in trs:
                if not tr.count and tr.cur_image is not None:
                    yield from self.retire_image(tr)
            return
        raise KernelError("EAGAIN", "trampoline regeneration did not settle")

    def _batches(self, trs, stages) -> Generator:
        staged = {stage.tr for stage in stages}
        new = {stage.tr: stage.new for stage in stages}
        undo: list = []
        mirrors = self.kernel.ftrace.mirror_snapshot()
        try:
            for table, group in self._by_table(trs):
                regs = [(tr, self.site_addr(tr, new[tr])) for tr in group
                        if tr in staged and tr.cur_image is None]
                mods = [(tr, self.site_addr(tr, tr.cur_image), self.site_addr(tr, new[tr]))
                        for tr in group if tr in staged and tr.cur_image is not None]
                dels = [(tr, self.site_addr(tr, tr.cur_image)) for tr in group
                        if tr not in staged and tr.cur_image is not None]
                if regs:
                    yield from table.register_batch(regs)
                    undo.append(lambda t=table, r=regs: t.unregister_batch(r))
                if mods:
                    yield from table.modify_batch(mods)
                    undo.append(lambda t=table, m=mods: t.modify_batch(
                        [(tr, b, a) for tr, a, b in m]))
                if dels:
                    yield from table.unregister_batch(dels)
                    undo.append(lambda t=table, d=dels: t.register_batch(d))
        except BaseException:
            for step in reversed(undo):
                yield from step()
            self.kernel.ftrace.drop_mirrors_since(mirrors)
            raise

    def _by_table(self, trs):
        direct = [tr for tr in trs if tr.ftrace_managed]
        poked = [tr for tr in trs if not tr.ftrace_managed]
        return [(t, g) for t, g in ((self.direct, direct), (self.text_poke, poked)) if g]


@contextlib.contextmanager
def _no_cyclic_gc():
    """A batch over tens of thousands of functions creates millions of objects, next to none
    of them cyclic garbage; the cyclic collector's full passes over the growing heap made it
    superlinear (measured, x86 latest: 50,000 functions attached in 14.1 s with it, 9.3 s
    without).  Off for the batch -- also while it waits for other CPUs, a bounded time --
    and back on when it ends however it ends (unless it was off already)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
