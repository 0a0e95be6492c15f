"""Devices: profiles of the devices tenantd knows (memory model, capacity, power, price)."""

from tenantd.devices.profiles import PROFILES, DeviceProfile, MemoryModel, get_profile

__all__ = ["PROFILES", "DeviceProfile", "MemoryModel", "get_profile"]
