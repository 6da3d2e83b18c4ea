/* ad.h: the public umbrella header of the advdiff core; the only core header
 * the bindings include. */
#ifndef AD_H
#define AD_H
#include "status.h"
#include "tensor.h"
#include "ops.h"
#include "autograd.h"
#include "backend.h"
#include "autocast.h"
#endif
