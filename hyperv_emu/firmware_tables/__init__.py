"""The platform tables an OS looks for, generated from the machine's configuration: the MP
tables (mp.py), the ACPI tables (acpi.py, and dsdt.py written with the AML builder aml.py and
the resource descriptors of resources.py), laid out in the BIOS ROM by rom.py from the pure-data
description in platform.py."""
