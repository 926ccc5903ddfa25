"""Search: leave-one-out scores, the greedy search, the sensitivity map, and where candidate evaluations run
(this process or Ray). Named ``searching`` so that no package hides the function ``shedder.search``."""
