from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    STATUS_OK: _ClassVar[Status]
    STATUS_NONZERO_EXIT: _ClassVar[Status]
    STATUS_TIMEOUT: _ClassVar[Status]
    STATUS_CPU_LIMIT: _ClassVar[Status]
    STATUS_MEMORY_LIMIT: _ClassVar[Status]
    STATUS_OUTPUT_LIMIT: _ClassVar[Status]
    STATUS_KILLED: _ClassVar[Status]
    STATUS_REJECTED: _ClassVar[Status]
    STATUS_FILE_SIZE_LIMIT: _ClassVar[Status]

class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_UNSPECIFIED: _ClassVar[Stream]
    STREAM_STDOUT: _ClassVar[Stream]
    STREAM_STDERR: _ClassVar[Stream]
STATUS_UNSPECIFIED: Status
STATUS_OK: Status
STATUS_NONZERO_EXIT: Status
STATUS_TIMEOUT: Status
STATUS_CPU_LIMIT: Status
STATUS_MEMORY_LIMIT: Status
STATUS_OUTPUT_LIMIT: Status
STATUS_KILLED: Status
STATUS_REJECTED: Status
STATUS_FILE_SIZE_LIMIT: Status
STREAM_UNSPECIFIED: Stream
STREAM_STDOUT: Stream
STREAM_STDERR: Stream

class Limits(_message.Message):
    __slots__ = ("wall_time_ms", "cpu_time_ms", "memory_bytes", "max_pids", "output_bytes", "file_size_bytes", "scratch_bytes")
    WALL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PIDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SCRATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    wall_time_ms: int
    cpu_time_ms: int
    memory_bytes: int
    max_pids: int
    output_bytes: int
    file_size_bytes: int
    scratch_bytes: int
    def __init__(self, wall_time_ms: _Optional[int] = ..., cpu_time_ms: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., max_pids: _Optional[int] = ..., output_bytes: _Optional[int] = ..., file_size_bytes: _Optional[int] = ..., scratch_bytes: _Optional[int] = ...) -> None: ...

class InputFile(_message.Message):
    __slots__ = ("path", "content")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: bytes
    def __init__(self, path: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("language", "code", "stdin", "files", "env", "limits", "session_id", "idempotency_key")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    language: str
    code: bytes
    stdin: bytes
    files: _containers.RepeatedCompositeFieldContainer[InputFile]
    env: _containers.ScalarMap[str, str]
    limits: Limits
    session_id: str
    idempotency_key: str
    def __init__(self, language: _Optional[str] = ..., code: _Optional[bytes] = ..., stdin: _Optional[bytes] = ..., files: _Optional[_Iterable[_Union[InputFile, _Mapping]]] = ..., env: _Optional[_Mapping[str, str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., session_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ResourceUsage(_message.Message):
    __slots__ = ("wall_time_s", "cpu_time_s", "peak_memory_bytes")
    WALL_TIME_S_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    wall_time_s: float
    cpu_time_s: float
    peak_memory_bytes: int
    def __init__(self, wall_time_s: _Optional[float] = ..., cpu_time_s: _Optional[float] = ..., peak_memory_bytes: _Optional[int] = ...) -> None: ...

class OutputFile(_message.Message):
    __slots__ = ("path", "content", "size", "truncated")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: bytes
    size: int
    truncated: bool
    def __init__(self, path: _Optional[str] = ..., content: _Optional[bytes] = ..., size: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ExecuteResult(_message.Message):
    __slots__ = ("execution_id", "status", "exit_code", "signal", "stdout", "stdout_truncated", "stderr", "stderr_truncated", "files", "files_truncated", "usage", "message", "limits", "language", "backend", "redactions", "cost", "trace_id")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    FILES_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    REDACTIONS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    status: Status
    exit_code: int
    signal: int
    stdout: bytes
    stdout_truncated: bool
    stderr: bytes
    stderr_truncated: bool
    files: _containers.RepeatedCompositeFieldContainer[OutputFile]
    files_truncated: bool
    usage: ResourceUsage
    message: str
    limits: Limits
    language: str
    backend: str
    redactions: int
    cost: float
    trace_id: str
    def __init__(self, execution_id: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., stdout: _Optional[bytes] = ..., stdout_truncated: _Optional[bool] = ..., stderr: _Optional[bytes] = ..., stderr_truncated: _Optional[bool] = ..., files: _Optional[_Iterable[_Union[OutputFile, _Mapping]]] = ..., files_truncated: _Optional[bool] = ..., usage: _Optional[_Union[ResourceUsage, _Mapping]] = ..., message: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., language: _Optional[str] = ..., backend: _Optional[str] = ..., redactions: _Optional[int] = ..., cost: _Optional[float] = ..., trace_id: _Optional[str] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("stream", "data")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    stream: Stream
    data: bytes
    def __init__(self, stream: _Optional[_Union[Stream, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ExecuteEvent(_message.Message):
    __slots__ = ("output", "result")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    output: OutputChunk
    result: ExecuteResult
    def __init__(self, output: _Optional[_Union[OutputChunk, _Mapping]] = ..., result: _Optional[_Union[ExecuteResult, _Mapping]] = ...) -> None: ...

class ListRuntimesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Runtime(_message.Message):
    __slots__ = ("language", "aliases", "version", "file_name")
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    language: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    version: str
    file_name: str
    def __init__(self, language: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., file_name: _Optional[str] = ...) -> None: ...

class ListRuntimesResponse(_message.Message):
    __slots__ = ("runtimes", "backend")
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    runtimes: _containers.RepeatedCompositeFieldContainer[Runtime]
    backend: str
    def __init__(self, runtimes: _Optional[_Iterable[_Union[Runtime, _Mapping]]] = ..., backend: _Optional[str] = ...) -> None: ...

class RecordUsageRequest(_message.Message):
    __slots__ = ("session_id", "model", "input_tokens", "output_tokens", "idempotency_key")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    input_tokens: int
    output_tokens: int
    idempotency_key: str
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class BudgetState(_message.Message):
    __slots__ = ("budget", "limit", "spent", "exceeded")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    budget: str
    limit: float
    spent: float
    exceeded: bool
    def __init__(self, budget: _Optional[str] = ..., limit: _Optional[float] = ..., spent: _Optional[float] = ..., exceeded: _Optional[bool] = ...) -> None: ...

class RecordUsageResponse(_message.Message):
    __slots__ = ("cost", "session_cost", "budgets")
    COST_FIELD_NUMBER: _ClassVar[int]
    SESSION_COST_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    cost: float
    session_cost: float
    budgets: _containers.RepeatedCompositeFieldContainer[BudgetState]
    def __init__(self, cost: _Optional[float] = ..., session_cost: _Optional[float] = ..., budgets: _Optional[_Iterable[_Union[BudgetState, _Mapping]]] = ...) -> None: ...
