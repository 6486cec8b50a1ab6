"""Protocol-neutral services shared by the front ends: directory, authentication, back ends, health."""
