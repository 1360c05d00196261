"""The management service (VMMS): the VM store, VM states, worker processes, checkpoints and
the console listener.  Each ``hyperv-emu vm ...`` command is a short-lived client of it that
finds running workers again through the files in the VM's directory."""
