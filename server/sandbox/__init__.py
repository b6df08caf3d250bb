"""code_interpreter executor: model-written Python run per thread in a bubblewrap sandbox.

Public API used by the run engine:

    manager = SandboxManager(work_root, SandboxLimits(), allow_unsandboxed=False)
    result = await manager.execute(thread_id, code, [InputFile(name, data)])
    await manager.close_session(thread_id); await manager.aclose()
    sandbox_status() -> None | "why code cannot run here"
"""

from .limits import SandboxLimits
from .manager import SandboxManager, sandbox_status
from .results import ExecutionResult, InputFile, OutputFile, SandboxUnavailable

__all__ = [
    "ExecutionResult",
    "InputFile",
    "OutputFile",
    "SandboxLimits",
    "SandboxManager",
    "SandboxUnavailable",
    "sandbox_status",
]
