"""Models of sa-ejhead; importing this module registers them with Detectron2."""
