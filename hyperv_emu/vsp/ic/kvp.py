"""The KVP (key-value pair exchange) IC (HYPERV_FACTS 7.4): the host drives every exchange.

After negotiation the host SETs its four standard keys in the guest's pool 3
(KVP_POOL_AUTO_EXTERNAL) and the user's keys (``--kvp``) in pool 0 (external), then
ENUMERATEs the guest's pools 1 (what the guest publishes) and 2 (its intrinsic values) from
index 0 until the guest answers HV_S_CONT, keeping what it learnt in
:attr:`Kvp.guest_pools`.  The host may GET, SET, DELETE or ENUMERATE at any time
(:meth:`Kvp.get` etc.).  Requests go out one at a time, the next after the guest's answer,
as Linux's driver handles a single transaction at a time.  An answer that is short or holds
sizes out of range completes its request with :data:`BAD_ANSWER` and is recorded in
``rejected``: never a host exception.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hyperv_emu.vsp.framework import DeviceChannel

from . import ic_protocol as I
from . import kvp_protocol as K
from .one_at_a_time import OneAtATime

#: OpenVMM's instance GUID for the KVP IC (HYPERV_FACTS 6).
KVP_INSTANCE = uuid.UUID("242ff919-07db-4180-9c2e-b86cb68c8c55")
#: Status of a request whose answer could not be decoded.
BAD_ANSWER = -1


@dataclass
class KvpRequest:
    """One host request; once answered, the guest's status and (GET, ENUMERATE) record."""

    operation: int
    pool: int
    key: str = ""
    value: str | None = None
    index: int = 0
    status: int | None = None
    answer: tuple[str, str] | None = None
    on_done: Callable[[KvpRequest], None] | None = field(default=None, repr=False)
    #: GET_IP_INFO: the adapter asked about, then the guest's answer; SET_IP_INFO: what to set.
    ip: K.IpInfo | None = None

    @property
    def done(self) -> bool:
        return self.status is not None

    def body(self) -> bytes:
        op = self.operation
        if op in (K.KVP_OP_GET_IP_INFO, K.KVP_OP_SET_IP_INFO):
            assert self.ip is not None
            return self.ip.encode(op, self.pool)
        if op in (K.KVP_OP_SET, K.KVP_OP_GET):
            return K.message(op, self.pool, K.value_record(self.key, self.value))
        if op == K.KVP_OP_DELETE:
            kb = K.encode_text(self.key, K.HV_KVP_EXCHANGE_MAX_KEY_SIZE)
            rec = K.hv_kvp_msg_delete(key_size=len(kb))
            rec.key[:len(kb)] = list(kb)
            return K.message(op, self.pool, rec)
        return K.message(op, self.pool, K.hv_kvp_msg_enumerate(index=self.index))

    def to_list(self) -> list[Any]:
        return [self.operation, self.pool, self.key, self.value, self.index, self.status,
                None if self.answer is None else list(self.answer),
                None if self.ip is None else self.ip.to_list()]

    @classmethod
    def from_list(cls, data: list[Any]) -> KvpRequest:
        op, pool, key, value, index, status, answer = data[:7]
        ip = data[7] if len(data) > 7 else None  # saved before IP info existed: none
        return cls(int(op), int(pool), str(key), value, int(index),
                   None if status is None else int(status),
                   None if answer is None else (str(answer[0]), str(answer[1])),
                   ip=None if ip is None else K.IpInfo.from_list(ip))


class Kvp(OneAtATime[KvpRequest]):
    interface_type = I.KVP_GUID
    msgtype = I.ICMSGTYPE_KVPEXCHANGE
    service_versions = ((4, 0), (3, 0), (1, 0))  # what Linux accepts, newest first

    def __init__(self, *, host_keys: dict[str, str] | None = None,
                 external: dict[str, str] | None = None,
                 instance: uuid.UUID = KVP_INSTANCE) -> None:
        super().__init__(instance, "kvp")
        for key, value in {**(host_keys or {}), **(external or {})}.items():
            K.check_key_value(key, value)
        self.host_keys = dict(host_keys or {})
        self.external = dict(external or {})
        #: What the guest reported per pool at the last enumeration of that pool.
        self.guest_pools: dict[int, dict[str, str]] = {}
        self._enumerating: dict[int, dict[str, str]] = {}

    # ---- host API ------------------------------------------------------------------------------
    def set(self, pool: int, key: str, value: str) -> KvpRequest:
        """Put ``key`` = ``value`` in the guest's ``pool``."""
        K.check_key_value(key, value)
        return self.submit(KvpRequest(K.KVP_OP_SET, self._pool(pool), key, value))

    def get(self, pool: int, key: str) -> KvpRequest:
        """Ask the guest for ``key`` in ``pool``; the answer lands in the request."""
        K.check_key_value(key, "")
        return self.submit(KvpRequest(K.KVP_OP_GET, self._pool(pool), key))

    def delete(self, pool: int, key: str) -> KvpRequest:
        K.check_key_value(key, "")
        return self.submit(KvpRequest(K.KVP_OP_DELETE, self._pool(pool), key))

    def enumerate(self, pool: int) -> KvpRequest:
        """Re-read the guest's ``pool`` into :attr:`guest_pools` (index 0 on)."""
        self._enumerating[self._pool(pool)] = {}
        return self.submit(KvpRequest(K.KVP_OP_ENUMERATE, pool, index=0))

    def get_ip_info(self, adapter_id: str) -> KvpRequest:
        """Ask the guest for the IP configuration of the adapter with MAC address
        ``adapter_id``; the answer lands in the request's ``ip``."""
        info = K.IpInfo(adapter_id)
        info.encode(K.KVP_OP_GET_IP_INFO)  # ValueError now if it does not fit
        return self.submit(KvpRequest(K.KVP_OP_GET_IP_INFO, K.KVP_POOL_EXTERNAL, ip=info))

    def set_ip_info(self, info: K.IpInfo) -> KvpRequest:
        """Ask the guest to configure an adapter (its daemon applies it)."""
        info.encode(K.KVP_OP_SET_IP_INFO)
        return self.submit(KvpRequest(K.KVP_OP_SET_IP_INFO, K.KVP_POOL_EXTERNAL, ip=info))

    @staticmethod
    def _pool(pool: int) -> int:
        if not 0 <= pool < K.KVP_POOL_COUNT:
            raise ValueError(f"KVP pool {pool} (pools are 0-{K.KVP_POOL_COUNT - 1})")
        return pool

    # ---- the service ---------------------------------------------------------------------------
    def start(self) -> None:
        queued = list(self.queue)
        self.queue.clear()
        for key, value in self.host_keys.items():
            self.queue.append(KvpRequest(K.KVP_OP_SET, K.KVP_POOL_AUTO_EXTERNAL, key, value))
        for key, value in self.external.items():
            self.queue.append(KvpRequest(K.KVP_OP_SET, K.KVP_POOL_EXTERNAL, key, value))
        for pool in (K.KVP_POOL_GUEST, K.KVP_POOL_AUTO):
            self._enumerating[pool] = {}
            self.queue.append(KvpRequest(K.KVP_OP_ENUMERATE, pool, index=0))
        self.queue.extend(queued)
        self.pump()

    def body(self, req: KvpRequest) -> bytes:
        return req.body()

    def on_response(self, header: I.icmsg_hdr, body: bytes) -> None:
        req = self.answered("KVP")
        if req is None:
            return
        status = int(header.status)
        try:
            self._complete(req, status, body)
        except K.KvpError as exc:
            self._reject(f"KVP {K.OP_NAMES[req.operation]} answer: {exc}")
            self._finish(req, BAD_ANSWER)
        self.pump()

    def _complete(self, req: KvpRequest, status: int, body: bytes) -> None:
        op = req.operation
        if len(body) < K.HDR_SIZE:
            raise K.KvpError(f"{len(body)}-byte body")
        if status == K.HV_S_OK and op == K.KVP_OP_GET_IP_INFO:
            req.ip = K.IpInfo.decode(body)
            return self._finish(req, status)
        if status != K.HV_S_OK or op not in (K.KVP_OP_GET, K.KVP_OP_ENUMERATE):
            if op == K.KVP_OP_ENUMERATE:
                self.guest_pools[req.pool] = self._enumerating.pop(req.pool, {})
            return self._finish(req, status)
        if len(body) < K.BODY_SIZE[op]:
            raise K.KvpError(f"{len(body)}-byte {K.OP_NAMES[op]} answer, "
                             f"{K.BODY_SIZE[op]} needed")
        start = K.HDR_SIZE + (4 if op == K.KVP_OP_ENUMERATE else 0)
        rec = K.hv_kvp_exchg_msg_value.from_buffer_copy(body, start)
        req.answer = K.parse_record(rec)
        if op == K.KVP_OP_ENUMERATE:
            self._enumerating.setdefault(req.pool, {})[req.answer[0]] = req.answer[1]
            # Next index; the guest ends the walk with HV_S_CONT.
            self.queue.appendleft(KvpRequest(K.KVP_OP_ENUMERATE, req.pool,
                                             index=req.index + 1))
        self._finish(req, status)

    def _finish(self, req: KvpRequest, status: int) -> None:
        req.status = status
        self.done(req)

    # ---- state ---------------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        state = super().save()
        state.update(
            guest_pools={str(p): dict(kv) for p, kv in self.guest_pools.items()},
            enumerating={str(p): dict(kv) for p, kv in self._enumerating.items()},
            queue=[r.to_list() for r in self.queue],
            current=None if self.current is None else self.current.to_list())
        return state

    def restore(self, state: dict[str, Any], channel: DeviceChannel | None) -> None:
        super().restore(state, channel)
        self.guest_pools = {int(p): dict(kv) for p, kv in state["guest_pools"].items()}
        self._enumerating = {int(p): dict(kv) for p, kv in state["enumerating"].items()}
        self.queue = deque(KvpRequest.from_list(r) for r in state["queue"])
        cur = state["current"]
        self.current = None if cur is None else KvpRequest.from_list(cur)
