"""scripts/forwarding.py: which stack loads it reports as waiting on narrower stores."""

from __future__ import annotations

from types import ModuleType

from support import script


def forwarding() -> ModuleType:
    return script("forwarding")


def function(name: str, body: str) -> str:
    """A function as objdump prints it: a header, then `addr:\tmnemonic operands` lines."""
    lines = [f"0000000000001000 <{name}>:"]
    for i, insn in enumerate(body.strip().splitlines()):
        lines.append(f"   {0x1000 + 4 * i:x}:\t{insn.strip()}")
    return "\n".join(lines) + "\n"


HOT = "Pb<L> as floor::Alloc>::alloc"


def test_two_halves_read_back_as_one_word_are_reported() -> None:
    asm = function(
        HOT,
        """
        movl   $0xffffffff,0x18(%rsp)
        mov    %r10d,0x1c(%rsp)
        mov    0x18(%rsp),%r9
        """,
    )
    found = forwarding().scan(asm)
    assert [(f.load_off, f.load_size, f.store_off, f.store_size) for f in found] == [
        (0x18, 8, 0x18, 4),
        (0x18, 8, 0x1C, 4),
    ]
    assert "load at 1008 of 8 bytes at 0x18(%rsp)" in str(found[0])


def test_loads_inside_a_store_and_of_its_size_are_not() -> None:
    asm = function(
        HOT,
        """
        mov    %rbp,0x18(%rsp)
        mov    0x18(%rsp),%rbx
        mov    0x1c(%rsp),%eax
        movzbl 0x19(%rsp),%ecx
        seta   0x10(%rsp)
        or     0x10(%rsp),%r10b
        """,
    )
    assert forwarding().scan(asm) == []


def test_a_store_overwritten_whole_no_longer_counts() -> None:
    asm = function(
        HOT,
        """
        movl   $0x1,0x18(%rsp)
        mov    %rax,0x18(%rsp)
        mov    0x18(%rsp),%rbx
        """,
    )
    assert forwarding().scan(asm) == []


def test_only_stores_on_a_path_to_the_load_count() -> None:
    # The byte stored before the unconditional jump cannot reach the load after it; the one
    # stored at the jump's target can.
    asm = function(
        HOT,
        """
        movb   $0x1,0x8(%rsp)
        jmp    1010
        mov    0x8(%rsp),%rbx
        ret
        movb   $0x1,0x10(%rsp)
        mov    0x10(%rsp),%rax
        """,
    )
    found = forwarding().scan(asm)
    assert [(f.load_addr, f.store_addr) for f in found] == [("1014", "1010")]


def test_a_moved_stack_pointer_forgets_the_stores_and_cold_functions_are_skipped() -> None:
    body = """
        movl   $0x1,0x8(%rsp)
        push   %rbx
        mov    0x8(%rsp),%rax
        """
    assert forwarding().scan(function(HOT, body)) == []
    body = """
        movl   $0x1,0x8(%rsp)
        mov    0x8(%rsp),%rax
        """
    assert len(forwarding().scan(function(HOT, body))) == 1
    assert forwarding().scan(function("floor::main", body)) == []


def test_operand_sizes() -> None:
    fw = forwarding()
    assert [fw.register_size(r) for r in ("%rax", "%eax", "%ax", "%al", "%r9d", "%xmm1")] == [
        8,
        4,
        2,
        1,
        4,
        16,
    ]
    assert fw.operand_size("movzbl", "%eax") == 1
    assert fw.operand_size("movzwl", "%eax") == 2
    assert fw.operand_size("movl", "$0xffffffff") == 4
    assert fw.operand_size("sete", "") == 1


def test_flags_stored_and_comparisons_read_count_too() -> None:
    # A byte written by `sete` and read back as a quadword by `cmpq`; an `addl` to a slot both
    # reads it and writes it whole, so the `movl` read after it lies inside its store.
    asm = function(
        HOT,
        """
        sete   0x8(%rsp)
        cmpq   $0x0,0x8(%rsp)
        addl   $0x1,0x10(%rsp)
        mov    0x10(%rsp),%eax
        lea    0x8(%rsp),%rdi
        """,
    )
    found = forwarding().scan(asm)
    assert [(f.load_addr, f.load_size, f.store_addr, f.store_size) for f in found] == [
        ("1004", 8, "1000", 1)
    ]
