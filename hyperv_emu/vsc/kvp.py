"""The guest's KVP store, as Linux's hv_kvp driver and its daemon behave (HYPERV_FACTS 7.4):
five pools of key/value strings; the host's SET stores, DELETE removes (HV_E_FAIL if the key
is not there), GET answers the value (HV_E_FAIL if absent), ENUMERATE answers the index-th
entry of a pool or HV_S_CONT past its end; GET_IP_INFO answers an adapter's IP configuration
(looked up by MAC address, case-insensitive), SET_IP_INFO replaces it.  The answer is written
in place into the request's body, which keeps its size."""

from __future__ import annotations

from hyperv_emu.vsp.ic import kvp_protocol as K


class GuestKvp:
    """The guest's pools (pool number -> key -> value), in insertion order."""

    def __init__(self) -> None:
        self.pools: dict[int, dict[str, str]] = {p: {} for p in range(K.KVP_POOL_COUNT)}
        #: The guest's adapters by MAC address (the daemon's adapter_id) and their IP setup.
        self.adapters: dict[str, K.IpInfo] = {}

    def answer(self, body: bytes) -> tuple[int, bytes]:
        """(status, body answered in place) for one KVP request body."""
        if len(body) < K.HDR_SIZE:
            return K.HV_E_FAIL, body
        hdr = K.hv_kvp_hdr.from_buffer_copy(body)
        op, pool = int(hdr.operation), int(hdr.pool)
        need = K.BODY_SIZE.get(op)
        if need is None or len(body) < need or pool >= K.KVP_POOL_COUNT:
            return K.HV_E_FAIL, body
        store = self.pools[pool]
        out = bytearray(body)
        try:
            if op in (K.KVP_OP_GET_IP_INFO, K.KVP_OP_SET_IP_INFO):
                return self._ip_info(op, pool, body)
            if op == K.KVP_OP_SET:
                rec = K.hv_kvp_exchg_msg_value.from_buffer_copy(body, K.HDR_SIZE)
                key, value = K.parse_record(rec)
                store[key] = value
                return K.HV_S_OK, body
            if op == K.KVP_OP_DELETE:
                rec_d = K.hv_kvp_msg_delete.from_buffer_copy(body, K.HDR_SIZE)
                key = K.decode_text(bytes(rec_d.key), int(rec_d.key_size),
                                    K.HV_KVP_EXCHANGE_MAX_KEY_SIZE, "key")
                return (K.HV_S_OK, body) if store.pop(key, None) is not None else (
                    K.HV_E_FAIL, body)
            if op == K.KVP_OP_GET:
                rec = K.hv_kvp_exchg_msg_value.from_buffer_copy(body, K.HDR_SIZE)
                key = K.decode_text(bytes(rec.key), int(rec.key_size),
                                    K.HV_KVP_EXCHANGE_MAX_KEY_SIZE, "key")
                if key not in store:
                    return K.HV_E_FAIL, body
                filled = K.value_record(key, store[key])
                out[K.HDR_SIZE:K.HDR_SIZE + K.VALUE_SIZE] = bytes(filled)
                return K.HV_S_OK, bytes(out)
            # ENUMERATE
            index = int.from_bytes(body[K.HDR_SIZE:K.HDR_SIZE + 4], "little")
            items = list(store.items())
            if index >= len(items):
                return K.HV_S_CONT, body
            filled = K.value_record(*items[index])
            out[K.HDR_SIZE + 4:K.HDR_SIZE + 4 + K.VALUE_SIZE] = bytes(filled)
            return K.HV_S_OK, bytes(out)
        except K.KvpError:
            return K.HV_E_FAIL, body

    def _ip_info(self, op: int, pool: int, body: bytes) -> tuple[int, bytes]:
        """GET_IP_INFO answers the adapter's configuration (HV_E_FAIL for an adapter the guest
        does not have, as the daemon fails to find its interface); SET_IP_INFO stores it."""
        info = K.IpInfo.decode(body)
        key = info.adapter_id.upper()
        if op == K.KVP_OP_SET_IP_INFO:
            if key not in self.adapters:
                return K.HV_E_FAIL, body
            self.adapters[key] = info
            return K.HV_S_OK, body
        have = self.adapters.get(key)
        if have is None:
            return K.HV_E_FAIL, body
        return K.HV_S_OK, have.encode(op, pool)
