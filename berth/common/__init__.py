"""Small helpers that several layers share, below all of them but `domain`: the connection to
Temporal and its payload converter, the API token, atomic file writes, child processes that die
with their parent, shorter GC pauses, a cheap HTTP check. Nothing here imports another berth
package but berth.settings."""
