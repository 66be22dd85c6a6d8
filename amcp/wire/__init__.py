"""Wire types shared by gateway and cloud (msgspec Structs, msgpack on the wire)."""
