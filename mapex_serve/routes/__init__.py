"""The service's routers, one concern each: health, models (with the Open Inference Protocol), predict."""
