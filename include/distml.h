/* distml: the whole public API. Include this, or the one layer header you need. */
#ifndef DISTML_H
#define DISTML_H
#include "distml/core.h"
#include "distml/comm.h"
#include "distml/coll.h"
#include "distml/task.h"
#include "distml/ml.h"
#include "distml/data.h"
#include "distml/train.h"
#endif
