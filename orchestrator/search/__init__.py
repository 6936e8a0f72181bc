"""Where to look: search spaces and their distributions (``space``, ``conditions``), how points are
drawn (``sampler``, ``tpe``), the stage plan (``stages``) and how a stage's ranges narrow around the
best trials or move past an edge (``narrowing``). Pure decision logic on plain data: no storage, no
Ray, no torch.
"""
