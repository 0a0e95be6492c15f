"""Devices: profiles of the devices tenantd knows (memory model, capacity, power, price), and
detection of those attached to this host (:mod:`tenantd.devices.detect`, imported where used)."""

from tenantd.devices.profiles import PROFILES, DeviceProfile, MemoryModel, get_profile

__all__ = ["PROFILES", "DeviceProfile", "MemoryModel", "get_profile"]
