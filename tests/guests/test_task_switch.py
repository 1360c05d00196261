"""Hardware task switches (task_switch.py for IDT task gates; the engine's own switch for far
CALL/JMP and IRET with NT): the task_switch32 guest checks every switch and fault it makes."""

from __future__ import annotations

from test_guests import assert_passed, boot


def test_task_switch32() -> None:
    run = boot("task_switch32", max_instructions=2_000_000)
    assert_passed(run, ["lcall TSS ok", "ljmp task gate ok", "INT 40h task gate ok",
                        "#DE task gate ok", "#DF and #PF task gates ok",
                        "busy/limit/present checks ok", "PASS"])
