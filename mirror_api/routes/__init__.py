"""One Litestar controller per endpoint of the contract (docs/api.md), thin: parameters in,
services or queries called, msgspec structs out.
"""
