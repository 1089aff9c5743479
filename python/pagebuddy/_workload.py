"""The demo workload: a hypervisor's page pool serving virtual machines.

:func:`demo_workload` is an operation source (:data:`pagebuddy._lockstep.OpSource`),
deterministic for a given seed. It receives each operation's outcome
(``(value, exception)``) so that later operations use the page frame numbers earlier
allocations returned, as a real caller does.

The story, on a 64 MiB pool of 4 KiB pages whose first 64 pages are reserved
(the hypervisor's own image):

* **Boot.** The hypervisor maps itself: a few dozen page-table pages at order 0,
  kept for the whole run.
* **VM creation.** Each VM gets a stage-2 root table (order 1, two concatenated
  pages), and per-vCPU state taken in one ``alloc_many`` call (order 0).
* **Memory faults.** A VM's memory is backed by 2 MiB blocks (order 9) while
  they can be had; when an order-9 allocation runs out, the fault falls back to a
  run of 4 KiB pages (order 0). Every few faults the stage-2 tables grow by a
  page-table page (order 0).
* **Sharing.** A VM shares some of its 4 KiB pages with the host: the host takes
  a reference with ``get_page`` and gives it back later with ``put_page``.
* **Block splits.** A 2 MiB mapping is broken up (the guest changed permissions
  on part of it, or ballooned memory out): ``split_page`` turns the block into 512
  order-0 pages and a random part of them is given back at once.
* **Bursts of frees.** A VM is torn down: its data pages go back in
  ``put_many`` batches and its blocks and tables one by one, in reverse
  allocation order or shuffled. Pages the host still holds a reference to stay
  allocated until the host drops them in a later reclaim burst. When memory runs
  out entirely the largest VM is torn down.

At the end a few VMs are still running, so the final state is fragmented.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass, field

from ._lockstep import OpSource, Outcome
from ._rules import Geometry, Op

__all__ = ["DEMO_GEOMETRY", "DEMO_OPS", "DEMO_SEED", "demo_workload"]

#: 64 MiB of 4 KiB pages at physical address 2 GiB; the first 256 KiB reserved.
DEMO_GEOMETRY = Geometry(
    nr_pages=1 << 14,
    page_size=4096,
    base_pfn=0x80000,
    reserved_pages=64,
    order_cap=11,
    zero="free",
)
DEMO_SEED = 2024
#: Approximate number of operations the demo workload generates.
DEMO_OPS = 30_000

BLOCK_ORDER = 9  # 2 MiB of 4 KiB pages


@dataclass
class _VM:
    pgd: int
    vcpus: list[int]
    tables: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)  # heads of unsplit order-9 blocks
    pages: list[int] = field(default_factory=list)  # order-0 data pages
    shared: list[int] = field(default_factory=list)  # pages the host holds a reference to
    target_pages: int = 0

    def size(self) -> int:
        return (len(self.blocks) << BLOCK_ORDER) + len(self.pages)


def demo_workload(
    geometry: Geometry = DEMO_GEOMETRY, seed: int = DEMO_SEED, ops: int = DEMO_OPS
) -> OpSource:
    """Yield about ``ops`` operations of the VM-host story for a pool of ``geometry``.

    Each ``yield`` returns the outcome of the operation just yielded. Orders are
    clamped to the pool's orders, so any geometry works (the story is written for
    :data:`DEMO_GEOMETRY`).
    """
    rng = random.Random(seed)
    top = geometry.max_order - 1
    block_order = min(BLOCK_ORDER, top)
    pgd_order = min(1, top)
    emitted = 0

    def budget() -> bool:
        return emitted < ops

    vms: list[_VM] = []
    host_refs: list[int] = []  # shared pages of dead VMs, still referenced by the host
    hyp_tables: list[int] = []

    # Boot: the hypervisor's own stage-1 tables.
    for _ in range(rng.randint(24, 40)):
        v, e = yield ("alloc", 0)
        emitted += 1
        if e is None:
            hyp_tables.append(v)

    def teardown(vm: _VM) -> Generator[Op, Outcome, int]:
        n = 0
        data = list(vm.pages)
        if rng.random() < 0.5:
            data.reverse()
        else:
            rng.shuffle(data)
        for i in range(0, len(data), 64):
            yield ("put_many", tuple(data[i : i + 64]))
            n += 1
        singles = vm.blocks + vm.tables + vm.vcpus + [vm.pgd]
        if rng.random() < 0.5:
            singles.reverse()
        else:
            rng.shuffle(singles)
        for pfn in singles:
            yield ("put", pfn)
            n += 1
        host_refs.extend(vm.shared)
        return n

    while budget():
        event = rng.random()
        if (not vms or event < 0.04) and len(vms) < 12:
            # Create a VM.
            pgd, e = yield ("alloc", pgd_order)
            emitted += 1
            if e is not None:
                continue
            nvcpu = rng.choice((1, 2, 2, 4, 4, 8))
            vcpus, e = yield ("alloc_many", 0, nvcpu)
            emitted += 1
            if e is not None:
                vcpus = []
            vm = _VM(pgd, list(vcpus))
            vm.target_pages = rng.choice((2, 4, 4, 8, 8, 12, 16, 24)) << block_order
            vms.append(vm)
        elif event < 0.70:
            # A memory fault in a VM that has not reached its size yet.
            growing = [vm for vm in vms if vm.size() < vm.target_pages]
            if not growing:
                vm = rng.choice(vms)
                vm.target_pages += 2 << block_order
                continue
            vm = rng.choice(growing)
            if rng.random() < 0.3:
                t, e = yield ("alloc", 0)
                emitted += 1
                if e is None:
                    vm.tables.append(t)
            head, e = yield ("alloc", block_order)
            emitted += 1
            if e is None:
                vm.blocks.append(head)
                continue
            # No 2 MiB block left: map this fault with 4 KiB pages instead.
            for _ in range(rng.randint(8, 64)):
                p, e = yield ("alloc", 0)
                emitted += 1
                if e is not None:
                    break
                vm.pages.append(p)
            if e is not None:
                # Out of memory: tear down the largest VM.
                victim = max(vms, key=_VM.size)
                vms.remove(victim)
                emitted += yield from teardown(victim)
        elif event < 0.80:
            # Share a 4 KiB page with the host, or give a shared one back.
            vm = rng.choice(vms)
            if vm.shared and rng.random() < 0.45:
                for _ in range(rng.randint(1, min(8, len(vm.shared)))):
                    p = vm.shared.pop(rng.randrange(len(vm.shared)))
                    yield ("put", p)
                    emitted += 1
            elif vm.pages:
                for _ in range(rng.randint(1, 8)):
                    p = rng.choice(vm.pages)
                    _, e = yield ("get", p)
                    emitted += 1
                    if e is None:
                        vm.shared.append(p)
        elif event < 0.88:
            # Break a 2 MiB block up and balloon part of it out.
            candidates = [vm for vm in vms if vm.blocks]
            if not candidates:
                continue
            vm = rng.choice(candidates)
            head = vm.blocks.pop(rng.randrange(len(vm.blocks)))
            _, e = yield ("split", head)
            emitted += 1
            pages = list(range(head, head + (1 << block_order)))
            keep = rng.randint(0, len(pages))
            rng.shuffle(pages)
            vm.pages.extend(pages[:keep])
            for p in pages[keep:]:
                yield ("put", p)
                emitted += 1
        elif event < 0.95:
            # The host drops references it kept to pages of VMs that are gone.
            if host_refs:
                rng.shuffle(host_refs)
                for p in host_refs:
                    yield ("put", p)
                    emitted += 1
                host_refs.clear()
            elif hyp_tables and rng.random() < 0.3:
                yield ("put", hyp_tables.pop())
                emitted += 1
            else:
                t, e = yield ("alloc", 0)
                emitted += 1
                if e is None:
                    hyp_tables.append(t)
        elif len(vms) > 3:
            # A VM shuts down: a burst of frees.
            victim = vms.pop(rng.randrange(len(vms)))
            emitted += yield from teardown(victim)
