"""The virtual ITS that the guest programs (KVM's emulated ITS): commands, command queue, tables."""
