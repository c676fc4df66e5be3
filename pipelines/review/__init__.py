"""Model-in-the-loop review in FiftyOne: push predictions, build the queue, serve the App, pull
corrections back as a new COCO source. Import fiftyone only through `fo_env.fiftyone()`."""
