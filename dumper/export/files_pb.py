"""CRIU's ``files.img`` messages, built at run time in a private pool.

``crit x DIR mems`` and ``crit x DIR rss`` name the file behind every
file-backed VMA (and the executable) by looking its id up in ``files.img``,
falling back to ``reg-files.img`` — and they fail if neither holds it. So an
exported set carries a ``files.img`` with one REG ``file_entry`` per mapped
file. dumper reads no files image, so these messages have no ``.proto`` in
``proto/``; they are described here with CRIU's field numbers and types
(images/fdinfo.proto ``file_entry``, regfile.proto ``reg_file_entry``,
fown.proto ``fown_entry``, v4.2), only the fields an export fills in::

    file_entry     { required fd_types type = 1; required uint32 id = 2;
                     optional reg_file_entry reg = 3; }
    reg_file_entry { required uint32 id = 1; required uint32 flags = 2;
                     required uint64 pos = 3; required fown_entry fown = 5;
                     required string name = 6; }
    fown_entry     { required uint32 uid = 1, euid = 2, signum = 3,
                     pid_type = 4, pid = 5; }

``fd_types`` REG is 1. The pool is private so these names can never clash
with a generated module.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

__all__ = ["FD_TYPE_REG", "file_entry", "reg_file_entry", "fown_entry"]

FD_TYPE_REG = 1

_F = descriptor_pb2.FieldDescriptorProto
_REQ, _OPT = _F.LABEL_REQUIRED, _F.LABEL_OPTIONAL


def _build() -> dict[str, type[Message]]:
    fdp = descriptor_pb2.FileDescriptorProto(name="dumper_export_criu_files.proto", syntax="proto2")
    enum = fdp.enum_type.add(name="fd_types")
    enum.value.add(name="UND", number=0)
    enum.value.add(name="REG", number=FD_TYPE_REG)

    fown = fdp.message_type.add(name="fown_entry")
    for number, name in enumerate(("uid", "euid", "signum", "pid_type", "pid"), 1):
        fown.field.add(name=name, number=number, type=_F.TYPE_UINT32, label=_REQ)

    reg = fdp.message_type.add(name="reg_file_entry")
    reg.field.add(name="id", number=1, type=_F.TYPE_UINT32, label=_REQ)
    reg.field.add(name="flags", number=2, type=_F.TYPE_UINT32, label=_REQ)
    reg.field.add(name="pos", number=3, type=_F.TYPE_UINT64, label=_REQ)
    reg.field.add(name="fown", number=5, type=_F.TYPE_MESSAGE, type_name=".fown_entry", label=_REQ)
    reg.field.add(name="name", number=6, type=_F.TYPE_STRING, label=_REQ)

    fe = fdp.message_type.add(name="file_entry")
    fe.field.add(name="type", number=1, type=_F.TYPE_ENUM, type_name=".fd_types", label=_REQ)
    fe.field.add(name="id", number=2, type=_F.TYPE_UINT32, label=_REQ)
    fe.field.add(name="reg", number=3, type=_F.TYPE_MESSAGE, type_name=".reg_file_entry", label=_OPT)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
        for name in ("file_entry", "reg_file_entry", "fown_entry")
    }


_CLASSES = _build()
file_entry: type[Message] = _CLASSES["file_entry"]
reg_file_entry: type[Message] = _CLASSES["reg_file_entry"]
fown_entry: type[Message] = _CLASSES["fown_entry"]
