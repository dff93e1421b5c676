"""What every process shares and nothing else: settings, logging, the garbage collector's
start-up tuning, embedded servers.

It imports no other package of the project, so the CLI, the API and the worker can all
import it and the arrows still run one way: CLI → api_shim / worker → schemas, core.
"""
