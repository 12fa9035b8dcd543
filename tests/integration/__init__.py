"""Integration tests: modules and playbooks run by real Ansible against real systems."""
