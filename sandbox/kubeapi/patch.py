"""The three patch formats the apiserver accepts (pure; inputs are never mutated).

- JSON merge patch (RFC 7386): ``application/merge-patch+json``;
- JSON patch (RFC 6902): ``application/json-patch+json``;
- strategic merge patch: ``application/strategic-merge-patch+json``. A subset: maps merge as in a
  merge patch, lists whose items carry a known merge key (``name``, ``containerPort``, ``type``,
  ``uid``...) merge by that key, other lists are replaced; the ``$patch`` (replace/delete),
  ``$retainKeys``, ``$deleteFromPrimitiveList/`` and ``$setElementOrder/`` directives are understood.
"""

from __future__ import annotations

import copy
from typing import Any

JSON = Any


class PatchError(ValueError):
    """A patch that is malformed or cannot be applied (400/422 for the caller)."""

    def __init__(self, message: str, *, invalid: bool = False) -> None:
        super().__init__(message)
        self.invalid = invalid  # a well-formed patch whose `test` failed or path is missing: 422


def merge_patch(target: JSON, patch: JSON) -> JSON:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- JSON patch -------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container(doc: JSON, parts: list[str], path: str) -> JSON:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise PatchError(f"path {path!r} does not exist", invalid=True)
    return cur


def _get(doc: JSON, path: str) -> JSON:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _container(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"path {path!r} does not exist", invalid=True)


def _remove(doc: JSON, path: str) -> JSON:
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _container(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchError(f"unable to remove nonexistent key {path!r}", invalid=True)


def _add(doc: JSON, path: str, value: JSON, *, replace: bool) -> JSON:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _container(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise PatchError(f"replace operation does not apply: doc is missing key: {path}", invalid=True)
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise PatchError(f"index out of range in {path!r}", invalid=True)
    else:
        raise PatchError(f"path {path!r} does not exist", invalid=True)
    return doc


def json_patch(target: JSON, ops: JSON) -> JSON:
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"missing value in {kind} operation")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=False)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "move":
            value = _remove(doc, op["from"])
            doc = _add(doc, path, value, replace=False)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op["from"])), replace=False)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"testing value {path} failed", invalid=True)
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}")
    return doc


# --- strategic merge patch --------------------------------------------------------------------

# List fields of the built-in kinds that merge by key rather than being replaced.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "imagePullSecrets": "name",
    "ports": "port",
    "conditions": "type",
    "ownerReferences": "uid",
    "tolerations": "key",
    "hostAliases": "ip",
    "secrets": "name",
    "containerStatuses": "name",
    "podIPs": "ip",
    "addresses": "type",
}
# Within a container, `ports` merge by containerPort.
_CONTAINER_PORT_PARENTS = ("containers", "initContainers", "ephemeralContainers")


def strategic_merge_patch(target: JSON, patch: JSON) -> JSON:
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    return _smp(target, patch, parent="")


def _smp(target: JSON, patch: dict[str, JSON], parent: str) -> JSON:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = _smp(result.get(key), value, parent=key)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, key, parent)
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(current: list[JSON], patch: list[JSON], field: str, parent: str) -> list[JSON]:
    key = MERGE_KEYS.get(field)
    if field == "ports" and parent in _CONTAINER_PORT_PARENTS:
        key = "containerPort"
    if field == "finalizers":
        # Upstream: finalizers is a plain list replaced by patches.
        key = None
    if key is None or not all(isinstance(p, dict) for p in patch):
        if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
            return [copy.deepcopy(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
        return copy.deepcopy(patch)
    if any(p.get("$patch") == "replace" for p in patch):
        return [copy.deepcopy(p) for p in patch if "$patch" not in p]
    result = copy.deepcopy(current)
    for item in patch:
        ident = item.get(key)
        idx = next((i for i, c in enumerate(result) if isinstance(c, dict) and c.get(key) == ident), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                result.pop(idx)
            continue
        if idx is None:
            result.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            result[idx] = _smp(result[idx], item, parent=field)
    return result
